"""Runs: the run store (`store.py`: folders + SQLite index), the tolerant reader of run folders
(`reader.py`), packing runs to move them between machines (`pack.py`) and the `runs` commands.

Layer: below train/ (data, spec → analysis → runs → train → ...); nothing here imports train/.
"""
