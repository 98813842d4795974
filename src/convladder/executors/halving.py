"""Successive halving for the frontier, in-process or on any executor that runs jobs (`scheduler: {name: halving}`).

Rung 0 trains every trial of a budget at low fidelity (`screen_epochs`, `screen_subset` training images; the
validation split is the full runs' own: `train_images` cuts the training images after the split). The best
1/eta by validation accuracy (worst search seed; ties: fewer parameters) go on to the next rung, epochs and
images growing geometrically; the last rung is the full recipe, and the winner is chosen among the full-fidelity
trials by `frontier.select`, as without halving. A seeded sample of trials that were not promoted is trained at
full fidelity too, so Spearman's rank correlation between rung-0 and full validation accuracy says whether the
screen ranks the trials as the full runs would. Every job is keyed by its config: a rerun trains nothing
measured. The test set is read for no decision here. docs/frontier.md ("Successive halving").
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from convladder.errors import UserError
from convladder.executors import frontier
from convladder.executors.base import Executor
from convladder.executors.sweep import Trial, make_trials, trial_jobs
from convladder.train.distill import resolve_dict as resolve_teacher
from convladder.executors.sweepspec import whole_number
from convladder.safeparse import clip, unknown_keys

HALVING_KEYS = {"name", "screen_epochs", "screen_subset", "reduction_factor", "rungs", "correlation_sample"}
POOR_RHO, FEW_PAIRS = 0.5, 4  # below these the screen's ranking is flagged


@dataclass
class HalvingSpec:
    """The `scheduler: {name: halving, ...}` block of a frontier file."""

    screen_epochs: int
    screen_subset: int = 0  # training images of rung 0 (0 = all)
    reduction_factor: float = 3.0  # keep the best 1/eta at each rung
    rungs: int = 2  # the last one is the full recipe
    correlation_sample: int = 4  # trials not promoted, trained at full fidelity for the rank check
    name: str = "halving"

    def describe(self) -> str:
        data = f"{self.screen_subset:,} training images" if self.screen_subset else "all training images"
        return (f"successive halving in-process on val_acc ({self.rungs} rungs from {self.screen_epochs} epoch(s) on "
                f"{data}, keeps the best 1/{self.reduction_factor:g} at each rung; {self.correlation_sample} trial(s) "
                "not promoted trained in full for the rank check)")


def is_halving(raw: Any) -> bool:
    name = raw.get("name") if isinstance(raw, dict) else raw
    return isinstance(name, str) and name.strip().lower() == "halving"


def parse_halving(data: dict[str, Any], where: Callable[..., str]) -> HalvingSpec | None:
    """The frontier file's `scheduler:` when it names halving (else None); a bad key is one line with file:line."""
    raw = data.get("scheduler")
    if not is_halving(raw):
        return None
    if not isinstance(raw, dict):
        raise UserError(f"{where('scheduler')}: scheduler: halving needs its screen: write "
                        "{name: halving, screen_epochs: 2} (screen_subset, reduction_factor, rungs, correlation_sample "
                        "are optional)")
    for key in raw:
        if key not in HALVING_KEYS:
            raise UserError(f"{where('scheduler', key)}: {unknown_keys([key], HALVING_KEYS, 'halving key')}")
    if "screen_epochs" not in raw:
        raise UserError(f"{where('scheduler')}: scheduler: halving needs screen_epochs: N (epochs of rung 0, e.g. 2)")
    factor = raw.get("reduction_factor", 3)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 1 < factor < 1e6:
        raise UserError(f"{where('scheduler', 'reduction_factor')}: reduction_factor must be a number > 1 (3 keeps "
                        f"the best third at each rung), not {clip(factor)}")

    def number(key: str, default: Any, least: int) -> int:
        return whole_number(raw.get(key, default), f"{where('scheduler', key)}: {key}", minimum=least)

    spec = HalvingSpec(screen_epochs=number("screen_epochs", None, 1), screen_subset=number("screen_subset", 0, 0),
                       reduction_factor=float(factor), rungs=number("rungs", 2, 2),
                       correlation_sample=number("correlation_sample", 4, 0))
    searched = (data.get("recipe") or {}).get("batch_size") or []
    batches = [v for v in [(data.get("base") or {}).get("batch_size", 128),
                           *(searched if isinstance(searched, list) else [searched])] if isinstance(v, int)]
    if spec.screen_subset and batches and spec.screen_subset < max(batches):
        raise UserError(f"{where('scheduler', 'screen_subset')}: screen_subset {spec.screen_subset} is smaller than a "
                        f"batch ({max(batches)} images); give at least {max(batches)} (0 = all)")
    return spec


# -- the rungs --------------------------------------------------------------------------------------------
def rung_sizes(trials: int, h: HalvingSpec) -> list[int]:
    """Trials at each rung: all at rung 0, then the best floor(n / eta) (at least one) at each next rung."""
    sizes = [trials]
    for _ in range(h.rungs - 1):
        sizes.append(max(1, math.floor(sizes[-1] / h.reduction_factor + 1e-9)))
    return sizes


def fidelity(h: HalvingSpec, rung: int, epochs: int, pool: int | None) -> tuple[int, int]:
    """(epochs, training images; 0 = all) of `rung` for a trial whose full recipe is `epochs` on `pool` images:
    geometric from the screen to the full recipe, which the last rung is exactly."""
    if rung >= h.rungs - 1:
        return epochs, 0
    t = rung / (h.rungs - 1)
    e0 = min(h.screen_epochs, epochs)
    e = min(epochs, max(1, round(e0 * (epochs / e0) ** t)))
    if not h.screen_subset or pool is None or h.screen_subset >= pool:
        return e, 0
    n = round(h.screen_subset * (pool / h.screen_subset) ** t)
    return e, (0 if n >= pool else n)


@lru_cache(maxsize=16)
def _dataset_size(dataset: str, data_root: str | None) -> int:
    from convladder.train.config import TrainConfig
    from convladder.train.device_data import load_splits

    return len(load_splits(TrainConfig(dataset=dataset, data_root=data_root)).y_train)


def train_pool(config: dict[str, Any]) -> int:
    """Training images a full run of `config` trains on: its data (or subset) less the validation split."""
    from convladder.train.config import TrainConfig, val_images

    tc = TrainConfig.from_dict(config)
    n = _dataset_size(tc.dataset, tc.data_root)
    return (min(n, tc.subset) if tc.subset else n) - val_images(tc)


def _cost(h: HalvingSpec, rung: int, t: Trial, seeds: int) -> float:
    """Epoch-equivalents (epochs x the share of the full run's training images) of a trial's jobs at `rung`."""
    pool = train_pool(t.config) if h.screen_subset else None
    e, n = fidelity(h, rung, int(t.config["epochs"]), pool)
    return seeds * e * (n / pool if n and pool else 1.0)


def _spent(h: HalvingSpec, t: Trial, rungs: list[int], seeds: int) -> float:
    """Epoch-equivalents of a trial's rungs; a rung whose config is an earlier one's (a screen as long as the full
    recipe) is the same job, trained once, so counted once."""
    seen: dict[str, int] = {}
    for r in sorted(rungs):
        seen.setdefault(json.dumps(rung_config(h, r, t), sort_keys=True, default=str), r)
    return sum(_cost(h, r, t, seeds) for r in seen.values())


def rung_config(h: HalvingSpec, rung: int, t: Trial) -> dict[str, Any]:
    """The trial's config at `rung`; the last rung is its config unchanged (so a plain search's runs count)."""
    e, n = fidelity(h, rung, int(t.config["epochs"]), train_pool(t.config) if h.screen_subset else None)
    return t.config if rung >= h.rungs - 1 else {**t.config, "epochs": e, "train_images": n}


def fidelities(h: HalvingSpec, rung: int, trials: list[Trial]) -> tuple[list[int], list[int | str]]:
    """The epochs and training images (or 'all') the trials train at `rung`, each sorted and without repeats
    (several values where the recipe searches epochs)."""
    configs = [rung_config(h, rung, t) for t in trials]
    images = sorted({int(c.get("train_images") or 0) for c in configs})
    return sorted({int(c["epochs"]) for c in configs}), [n or "all" for n in images]


def _run_rung(h: HalvingSpec, rung: int, group: list[Trial], seeds: int, runs_root: str | Path, executor: Executor,
              on_done: Callable[[dict[str, Any]], None] | None) -> dict[str, list[dict[str, Any]]]:
    jobs = []
    for t in group:
        for job in trial_jobs(replace(t, config=rung_config(h, rung, t)), seeds):
            job.label, job.meta["rung"] = job.label.replace(" seed ", f" rung {rung} seed "), rung
            jobs.append(job)
    runs: dict[str, list[dict[str, Any]]] = {t.id: [] for t in group}
    for res in executor.map(jobs, runs_root, on_done=on_done):
        runs[res["trial"]].append(res)
    return runs


def _val(runs: list[dict[str, Any]], runs_root: str | Path) -> float | None:
    """The worst final-epoch validation accuracy over a trial's seeds at one rung (read from the store, as
    `frontier.select` reads it); None when a seed has none."""
    vals = [frontier._final(runs_root, r.get("run_id"), "val_acc") if r.get("status") in ("completed", "skipped")
            else None for r in runs]
    return min(vals) if vals and None not in vals else None


def search_halving(spec: Any, budget: int, planned: list[Trial], runs_root: str | Path, executor: Executor,
                   on_done: Callable[[dict[str, Any]], None] | None = None
                   ) -> tuple[Trial | None, list[dict[str, Any]], dict[str, Any]]:
    """Successive halving over a budget's trials: (winner, trial rows, the `screening` record)."""
    h, seeds = spec.halving, spec.search_seeds
    pending = [t for t in planned if t.status == "pending"]
    for t in pending:  # teacher: its full run id, which every rung's job key holds (train/distill.py)
        t.config = resolve_teacher(t.config, runs_root)
    if not pending:  # every trial over budget or unbuildable: nothing to screen
        return (*frontier.select(planned, runs_root), None)
    sizes = rung_sizes(len(pending), h)
    scores: dict[str, dict[int, float | None]] = {t.id: {} for t in pending}
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {t.id: {} for t in pending}
    alive, sample, rungs, trained = pending, [], [], 0
    for rung in range(h.rungs):
        last = rung == h.rungs - 1
        group = alive + sample if last else alive
        for tid, rs in _run_rung(h, rung, group, seeds, runs_root, executor, on_done).items():
            runs[tid][rung], scores[tid][rung] = rs, _val(rs, runs_root)
            trained += sum(r.get("status") != "skipped" for r in rs)
        epochs, images = fidelities(h, rung, group)
        rungs.append({"rung": rung, "trials": len(alive), "rank_check": len(sample), "epochs": epochs,
                      "train_images": images, "full_recipe": last,
                      "scored": sum(scores[t.id][rung] is not None for t in group)})
        if last:
            break
        ranked = sorted((t for t in alive if scores[t.id][rung] is not None),
                        key=lambda t: (-scores[t.id][rung], t.params or 0, t.id))
        alive = ranked[:sizes[rung + 1]]
        rungs[-1]["promoted"] = [t.id for t in alive]
        if rung == h.rungs - 2:  # the next rung is the full recipe: draw the rank check's sample from the rest
            promoted = {t.id for t in alive}
            rest = sorted(t.id for t in pending if t.id not in promoted and scores[t.id].get(0) is not None)
            picked = set(random.Random(f"halving-{spec.sample_seed}-{budget}").sample(
                rest, min(h.correlation_sample, len(rest))))
            sample = [t for t in pending if t.id in picked]
    full, sampled = {t.id for t in alive + sample}, {t.id for t in sample}
    final_trials = []
    for t in planned:
        if t.id in full:  # status from the validation score alone: nothing here reads a test accuracy
            rs, ok = runs[t.id][h.rungs - 1], scores[t.id][h.rungs - 1] is not None
            done = replace(t, runs=rs, status="completed" if ok else "failed", error=None if ok else "; ".join(
                f"{r.get('label')}: {r.get('error') or r.get('status')}" for r in rs))
        else:
            reached = max(runs.get(t.id) or {0: None})
            done = replace(t, status="stopped" if t.status == "pending" else t.status, runs=[],
                           error=f"screened out at rung {reached}" if t.status == "pending" else t.error)
        final_trials.append(done)
    winner, rows = frontier.select(final_trials, runs_root)
    for row in rows:
        tid = row["trial"]
        row["rungs"] = {str(r): v for r, v in scores.get(tid, {}).items()}
        row["rank_check_sample"] = tid in sampled
    pairs = [{"trial": t.id, "screen_val": scores[t.id][0], "full_val": scores[t.id][h.rungs - 1],
              "sampled": t.id in sampled} for t in alive + sample
             if scores[t.id].get(0) is not None and scores[t.id].get(h.rungs - 1) is not None]
    rho = spearman([p["screen_val"] for p in pairs], [p["full_val"] for p in pairs])
    grid = sum(_cost(h, h.rungs - 1, t, seeds) for t in pending)
    spent = sum(_spent(h, t, list(runs[t.id]), seeds) for t in pending)
    screening = {"method": "successive halving", **{k: getattr(h, k) for k in sorted(HALVING_KEYS - {"name"})},
                 "rungs": rungs, "rank_check_sample": [t.id for t in sample], "pairs": pairs, "spearman": rho,
                 "n": len(pairs), "flag": rank_flag(rho, len(pairs)),
                 "spearman_of": "rung-0 validation accuracy vs full-fidelity validation accuracy (worst search seed), "
                                "over every trial trained at full fidelity",
                 "epoch_equivalents": {"halving": round(spent, 2), "grid": round(grid, 2)}, "jobs_trained": trained,
                 "winner_from": None if winner is None else "rank-check sample" if winner.id in sampled else "promoted"}
    return winner, rows, screening


# -- the rank check ---------------------------------------------------------------------------------------
def average_ranks(values: list[float]) -> list[float]:
    """1-based ranks, tied values sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson's r of the tie-averaged ranks); None under 2 pairs or a constant side."""
    if len(xs) != len(ys) or len(xs) < 2:
        return None
    rx, ry = average_ranks(xs), average_ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def rank_flag(rho: float | None, n: int) -> str | None:
    """The warning a rank check earns: too few pairs to judge, an undefined or a poor correlation; None when fine."""
    if n < FEW_PAIRS:
        return f"too few to judge: {n} full-fidelity trial(s), fewer than {FEW_PAIRS}"
    if rho is None:
        return "no rank correlation: every screen (or full) score is the same"
    if rho < POOR_RHO:
        return f"the screen ranks poorly: spearman {rho:+.2f} < {POOR_RHO}"
    return None


def _span(values: list[Any], unit: str) -> str:
    """[2] -> '2 ep'; [5, 8] -> '5-8 ep'; ['all'] -> 'all img'."""
    shown = [f"{v:,}" if isinstance(v, int) else str(v) for v in values]
    return (shown[0] if len(shown) == 1 else f"{shown[0]}-{shown[-1]}") + f" {unit}"


def screening_line(s: dict[str, Any]) -> str:
    """One line for the frontier's end table: the rungs, the rank check (loud when flagged), the cost."""
    rungs = " -> ".join(f"{r['trials']}" + (f"+{r['rank_check']}" if r.get("rank_check") else "")
                        + f" x {_span(r['epochs'], 'ep')}" + ("" if r["train_images"] == ["all"]
                                                              else f" on {_span(r['train_images'], 'img')}")
                        for r in s["rungs"])
    rho = "-" if s["spearman"] is None else f"{s['spearman']:+.2f}"
    cost = s["epoch_equivalents"]
    line = (f"halving {rungs}; spearman rung 0 vs full (val) {rho}, n={s['n']}; search {cost['halving']:g} "
            f"epoch-equivalents, a plain grid {cost['grid']:g}")
    if s.get("winner_from") == "rank-check sample":  # the screen had dropped the winner: the sample found it
        line += "; the winner came from the rank-check sample (the screen had not promoted it)"
    return line + (f"  WARNING: {s['flag'].upper()}" if s.get("flag") else "")


def plan_lines(spec: Any, budget: int, cands: list[Any]) -> list[str]:
    """`frontier --dry-run` under halving: trials, epochs and images per rung, the cost against a plain grid."""
    h, seeds = spec.halving, spec.search_seeds
    pending = [t for t in make_trials(frontier.search_sweep(spec, budget, cands)) if t.status == "pending"]
    if len(pending) < 2:
        return ["  successive halving: one trial, nothing to screen"]
    sizes = rung_sizes(len(pending), h)
    sampled = min(h.correlation_sample, len(pending) - sizes[-1])
    lines, spent = [f"  successive halving, {len(pending)} trials x {seeds} search seed(s):"], 0.0
    for rung, n in enumerate(sizes):
        last = rung == h.rungs - 1
        epochs, images = fidelities(h, rung, pending)
        mean = sum(_cost(h, rung, t, seeds) for t in pending) / len(pending)  # which trials go on is not known yet
        spent += (n + (sampled if last else 0)) * mean
        lines.append(f"    rung {rung}: {n:>4} trial(s)" + (f" + {sampled} not promoted (the rank check)" if last else "")
                     + f", {_span(epochs, 'epoch(s)')}, "
                     + ("all training images" if images == ["all"] else f"{_span(images, 'training images')}")
                     + (" = the full recipe" if last else ""))
    grid = sum(_cost(h, h.rungs - 1, t, seeds) for t in pending)
    approx = "about " if len({t.config["epochs"] for t in pending}) > 1 else ""
    lines.append(f"    search: {approx}{spent:.1f} epoch-equivalents (epochs x share of the training images) against "
                 f"{grid:.1f} for the plain grid ({spent / grid:.0%}); the winner's {spec.seeds} fresh seeds come on top "
                 "either way")
    return lines
