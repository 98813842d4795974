"""`convladder doctor`: sanity checks of a network, its data and its learning rate before (and during) training.

The notes ask "How do we verify model is learning?" and warn "Why add something to your network without seeing
a disease?". The doctor looks for the diseases first: badly normalised data, an initial loss far from
-ln(1/classes), layers whose activations or gradients vanish or explode, dead ReLUs, a network that cannot
overfit one small batch, a learning rate outside the range the LR range test finds, a network that learns
nothing that carries to held-out images; optionally one epoch's train/validation gap and the notes' verdict.

Python: `convladder.doctor.run.doctor(model, splits=None, config=None, epochs=0) -> DoctorResult`
(modules: `result.py` the result and its text; `checks.py` the checks at initialisation; `probes.py` the
checks that train a copy of the network; `run.py` the order they run in). Nothing here writes files; the
HTML page is `convladder.report.doctorpage`.
"""
