"""The Python API's modules (`convladder.<name>` loads them lazily): `run.py` stored runs (runs, load, compare,
Run), `tasks.py` the CLI's commands as functions, `display.py` how their results show (text and HTML)."""
