"""Run folders made by copying a real one: another seed, a repeat, a stale config or an interrupted run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def copy_run(src: Path, run_id: str, *, config: dict | None = None, result: dict | None = None,
             drop_result: bool = False) -> Path:
    """A copy of run folder `src` under `run_id`, its config.json/result.json edited (or result.json removed)."""
    dst = src.parent / run_id
    shutil.copytree(src, dst)
    if config:
        cfg = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**cfg, **config}))
    if drop_result:
        (dst / "result.json").unlink()
    elif result:
        res = json.loads((dst / "result.json").read_text())
        res.update(run_id=run_id, **{k: v for k, v in result.items() if k != "final"})
        res["final"].update(result.get("final") or {})
        (dst / "result.json").write_text(json.dumps(res))
    return dst


TIMING = ("epoch_time_s", "train_time_s", "train_images_per_s")  # wall-clock figures: differ between equal runs


def metrics_rows(store, run_id: str) -> list[dict]:
    """A run's metrics.jsonl rows without the timing keys, so two runs of the same computation compare equal."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in store.read_metrics(run_id)]
