"""Running a ladder: every step x seed is an independent job (a pure function of its resolved config).

A job's key is a hash of its config (`convladder.executors.base.job_key`); its run carries the tags
`job:<key>`, `ladder:<name>`, `step:<i>`, so a rerun finds finished jobs in the store and skips them,
and an interrupted ladder resumes where it stopped.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from convladder.errors import UserError
from convladder.executors.base import Executor, Job, find_completed, make_executor, make_job
from convladder.ladder.ladder import Ladder, Step


def parse_steps(text: str | None, n: int) -> list[int]:
    """'3-6' / '1,3,5' / '2-' / None (all) -> sorted 1-based step indexes, checked against n steps."""
    if not text:
        return list(range(1, n + 1))
    chosen: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                chosen.update(range(int(lo or 1), int(hi or n) + 1))
            else:
                chosen.add(int(part))
        except ValueError:
            raise UserError(f"--steps {text!r}: write step numbers like 3-6 or 1,3,5") from None
    bad = [i for i in chosen if not 1 <= i <= n]
    if bad:
        raise UserError(f"--steps {text!r}: the ladder has steps 1-{n}, not {bad[0]}")
    return sorted(chosen)


def step_config(ladder: Ladder, step: Step, seed_offset: int = 0, **options: Any) -> dict[str, Any]:
    """The full TrainConfig dict of one step and seed: defaults < ladder base < steps < run options."""
    from convladder.train.config import TrainConfig, val_images, validate

    data = {**step.train, "model": step.spec_text, "seeds": 1}
    data.update({k: v for k, v in options.items() if v is not None})
    data["seed"] = int(data.get("seed", 1)) + seed_offset
    data["name"] = f"{ladder.name} {step.index}. {step.name}"
    config = TrainConfig.from_dict(data)
    try:
        validate(config)
    except UserError as exc:
        raise UserError(f"{step.where(ladder)}: {exc}") from None
    # with --subset the split is at most a tenth of it, as in `train` (TrainConfig.subset); record what runs
    return config.replace(val_size=val_images(config)).to_dict()


OPTS_TAG = "opts:"  # the run options (epochs, subset, dataset, ...) a ladder run was started with


def options_tag(options: dict[str, Any]) -> str:
    """`opts:dataset=fashion-mnist;epochs=1` -- lets the report group runs of one `ladder run` invocation."""
    keep = {k: v for k, v in options.items() if v is not None and k not in ("device", "threads")}
    return OPTS_TAG + ";".join(f"{k}={keep[k]}" for k in sorted(keep))


def parse_options_tag(tag: str) -> dict[str, Any]:
    body = tag[len(OPTS_TAG):]
    out: dict[str, Any] = {}
    for item in filter(None, body.split(";")):
        k, _, v = item.partition("=")
        out[k] = int(v) if v.isdigit() else v
    return out


def ladder_jobs(ladder: Ladder, steps: list[int] | None = None, seeds: int = 1, *,
                runs_root: str | Path | None = None, tolerant: bool = False, **options: Any) -> list[Job]:
    """One job per selected step and seed, in ladder order. `runs_root`: the store a step's `teacher:` is looked
    up in, so the job key holds its full run id (train/distill.py; `tolerant`: a report's recomputed keys)."""
    from convladder.train.distill import resolve_dict

    jobs = []
    opts = options_tag(options)
    for i in steps or range(1, len(ladder.steps) + 1):
        step = ladder.step(i)
        for s in range(seeds):
            cfg = step_config(ladder, step, s, **options)
            if runs_root is not None:
                cfg = resolve_dict(cfg, runs_root, tolerant=tolerant)
            jobs.append(make_job(cfg, label=f"step {i} {step.name} seed {cfg['seed']}",
                                 tags=(f"ladder:{ladder.name}", f"step:{i}", opts, *ladder.source_tags),
                                 step=i, seed=cfg["seed"]))
    return jobs


def run_ladder(ladder: Ladder, runs_root: str | Path, steps: str | list[int] | None = None, seeds: int = 1,
               executor: str | Executor = "inprocess", echo: Callable[[str], None] | None = None,
               **options: Any) -> list[dict[str, Any]]:
    """Check the ladder, then run its jobs (skipping finished ones); return one result dict per job."""
    from convladder.ladder.diff import check_ladder

    check_ladder(ladder)
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1 (got {seeds})")
    echo = echo or (lambda line: print(line, file=sys.stdout, flush=True))
    indexes = steps if isinstance(steps, list) else parse_steps(steps, len(ladder.steps))
    jobs = ladder_jobs(ladder, indexes, seeds, runs_root=runs_root, **options)
    results: dict[str, dict[str, Any]] = {}
    todo: list[Job] = []
    for job in jobs:
        done = find_completed(runs_root, job.key)
        if done:
            results[job.key] = {"key": job.key, "label": job.label, **job.meta, "run_id": done, "status": "skipped"}
            echo(f"[skip] {job.label}: finished earlier (run {done})")
        else:
            todo.append(job)
    counter = {"n": 0}

    def on_done(res: dict[str, Any]) -> None:
        counter["n"] += 1
        results[res["key"]] = res
        echo(_progress_line(res, counter["n"], len(todo)))

    if todo:
        (make_executor(executor) if isinstance(executor, str) else executor).map(todo, runs_root, on_done=on_done)
    return [results.get(job.key, {"key": job.key, "label": job.label, "status": "missing"}) for job in jobs]


def _progress_line(res: dict[str, Any], n: int, total: int) -> str:
    head = f"[{n}/{total}] {res.get('label', res['key'])}:"
    wall = f"{res.get('wall_time_s', 0):.1f}s"
    if res["status"] == "failed":
        return f"{head} FAILED ({res.get('error')}) {wall}"
    acc = res.get("final_test_acc")
    acc_text = f"test {acc:.2f}%" if isinstance(acc, (int, float)) else "test -"
    params = res.get("params")
    return (f"{head} {res['status']}, {acc_text}, {params or 0:,} params, {wall}, run {res.get('run_id')}"
            + (f"  (note: {res['note']})" if res.get("note") else ""))
