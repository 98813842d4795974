"""Make run folders by hand, in the run-store layout, without the trainer.

Tests and the report benchmark use these so they depend only on the documented layout
(docs/ARCHITECTURE.md), not on the training loop. Models are tiny and trained for a few
steps on the deterministic synthetic data set, so the figures have real weights to show.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from convladder.data.normalise import normalise_images
from convladder.spec.build import build_module
from convladder.spec.notation import format_spec
from convladder.spec.registry import resolve_spec

SMALL_SPEC = ("conv1[conv3x3(8, bias=false) relu bn] conv2[conv3x3(12, bias=false) relu bn] "
              "trans1[maxpool2x2 conv1x1(8, bias=false)] conv3[conv3x3(12, bias=false) relu bn] "
              "out[gap conv1x1(10, bias=false) logsoftmax]")


def ladder_spec(step: int) -> str:
    """A different small net per step (channels grow with the step), so the ladder table varies."""
    c = 6 + step
    return (f"conv1[conv3x3({c}, bias=false) relu bn] conv2[conv3x3({c + 4}, bias=false) relu bn] "
            f"trans1[maxpool2x2 conv1x1({c}, bias=false)] conv3[conv3x3({c + 4}, bias=false) relu bn] "
            "out[gap conv1x1(10, bias=false) logsoftmax]")


def _synthetic():
    from convladder.train.device_data import synthetic_splits

    return synthetic_splits(n_train=512, n_test=512)


def make_run(root: Path, spec_text: str = SMALL_SPEC, *, epochs: int = 3, steps_per_epoch: int = 4, seed: int = 1,
             extra_config: dict[str, Any] | None = None) -> Path:
    """Train a tiny network for a few steps and write a complete run folder; return its path."""
    torch.manual_seed(seed)
    spec = resolve_spec(spec_text)
    model = build_module(spec)
    data = _synthetic()  # same templates as the trainer's synthetic set (seeded), smaller
    mean, std = data.mean, data.std
    norm = lambda x: normalise_images(x, mean, std)  # noqa: E731
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
    folder = root / run_id
    folder.mkdir(parents=True)
    rows = []
    g = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        model.train()
        for _ in range(steps_per_epoch):
            idx = torch.randint(0, len(data.y_train), (64,), generator=g)
            loss = F.cross_entropy(model.logits(norm(data.x_train[idx])), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            tr = model.logits(norm(data.x_train[:256]))
            te = model.logits(norm(data.x_test))
        rows.append({"epoch": epoch, "lr": 0.05, "train_loss": float(F.cross_entropy(tr, data.y_train[:256])),
                     "train_acc": 100.0 * float((tr.argmax(1) == data.y_train[:256]).float().mean()),
                     "test_loss": float(F.cross_entropy(te, data.y_test)),
                     "test_acc": 100.0 * float((te.argmax(1) == data.y_test).float().mean()), "epoch_time_s": 0.01})
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    config = {"model": spec_text, "model_spec": format_spec(spec), "dataset": "synthetic", "epochs": epochs,
              "optimizer": "sgd", "lr": 0.05, "schedule": "none", "seed": seed, "target": 99.4, **(extra_config or {})}
    last = rows[-1]
    best = max(rows, key=lambda r: r["test_acc"])
    result = {"run_id": run_id, "status": "completed", "params": params, "epochs_done": epochs,
              "final": {"train_acc": last["train_acc"], "val_acc": None, "test_acc": last["test_acc"]},
              "best": {"epoch": best["epoch"], "val_acc": None, "test_acc": best["test_acc"], "selected_by": "test"},
              "gap": last["train_acc"] - last["test_acc"], "potential": last["test_acc"] + 100 - last["train_acc"],
              "verdict": "underfitting" if last["train_acc"] < 99.4 else "healthy",
              "train_acc_source": "first 256 training images, eval mode", "wall_time_s": 0.5, "seed": seed,
              "target": 99.4}
    env = {"torch": torch.__version__, "device": "cpu", "input_shape": list(spec.input_shape)}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    (folder / "env.json").write_text(json.dumps(env))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "result.json").write_text(json.dumps(result, indent=1))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    save_file(state, str(folder / "best.safetensors"))
    return folder


def make_ladder(root: Path, name: str = "demo-ladder", steps: int = 3, seeds: int = 1, epochs: int = 3) -> list[Path]:
    """Runs of a synthetic ladder: `steps` steps × `seeds` seeds, with the ladder fields in config.json."""
    paths = []
    for step in range(steps):
        for s in range(seeds):
            extra = {"ladder": name, "step": step, "step_name": f"s{step}-c{6 + step}",
                     "change": "first network" if step == 0 else f"one more channel per layer ({6 + step})",
                     "handout": {"params": 10890 + step * 100, "test_acc": 98.8 + step * 0.05} if step % 2 == 0 else None}
            paths.append(make_run(root, ladder_spec(step), epochs=epochs, seed=1 + s, extra_config=extra))
    return paths
