"""int8 export of the registered frontier networks that have trained runs: accuracy, bytes, peak RAM, speed.

    nice -n 10 PYTHONPATH=src .venv/bin/python bench/bench_int8.py --runs STORE [--runs STORE2 ...] [--threads 1]

For every registered network of at most 20k parameters (tiny6k, tiny8k, course15k, frontier2k-20k) that has
completed MNIST runs in the given stores, each run is copied into a temporary store (nothing is written into
the stores given) and exported by `serve.quantize.export_int8` with the defaults (QOperator, 1,000 calibration
images): fp32 and int8 accuracy on all 10,000 test images, the drop, both file sizes; the table's weight bytes
and peak RAM (analysis.memory). Speed: onnxruntime, `--threads` intra-op threads, batch 500, fp32 and int8
passes over the 10,000 test images alternated (--rounds rounds), best pass of each — the box is shared, so the
load average is printed beside. On the newest run of each network, the choices: QDQ vs QOperator, and 200 vs
1,000 calibration images. Writes bench/results/int8.md (atomically) and prints it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from convladder.analysis.table import summarize
from convladder.data.normalise import to_unit
from convladder.fileio import atomic_write_text
from convladder.runs.store import RunStore
from convladder.serve.export import ort_probs, ort_session
from convladder.serve.predict import load_run
from convladder.serve.quantize import (TIMING_BATCH, calibration_sample, export_int8, fp32_graph, quantize_onnx,
                                       run_data, versions)
from convladder.spec.registry import list_models, resolve_spec
from convladder.train.result import median_value

RESULTS = Path(__file__).parent / "results"
NETWORKS = ("frontier2k", "frontier3k", "frontier4k", "frontier5k", "tiny6k", "tiny8k", "frontier10k", "course15k",
            "frontier15k", "frontier20k")


def find_runs(stores: list[Path]) -> dict[str, list[tuple[Path, str]]]:
    """Completed MNIST runs of each network in NETWORKS: (store, run id), oldest first."""
    found: dict[str, list[tuple[Path, str]]] = {}
    for root in stores:
        for rec in RunStore(root).list_runs(status="completed"):
            if rec.model in NETWORKS and (rec.dataset or "mnist") == "mnist":
                found.setdefault(rec.model, []).append((root, rec.id))
    return {name: sorted(runs, key=lambda r: r[1]) for name, runs in found.items()}


def copy_of(root: Path, run_id: str, tmp: Path) -> Path:
    """The run folder copied into a private store of its own (so export-int8.json lands there, not in the store
    given; one store per run, as a store indexes its folders when first opened)."""
    store = tmp / f"store-{run_id}"
    shutil.copytree(root / run_id, store / run_id)
    return store


def rates(models: dict[str, bytes], x01: np.ndarray, threads: int, rounds: int) -> dict[str, float]:
    """images/s per model: passes alternated between the models, best pass of each."""
    sessions = {name: ort_session(data, threads) for name, data in models.items()}
    best = {name: float("inf") for name in models}
    for name, session in sessions.items():
        ort_probs(session, x01[:TIMING_BATCH], TIMING_BATCH)  # warm-up
    for _ in range(rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            ort_probs(session, x01, TIMING_BATCH)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: len(x01) / t for name, t in best.items()}


def accuracy(data: bytes, x01: np.ndarray, y: np.ndarray) -> float:
    return float((ort_probs(ort_session(data, 1), x01, TIMING_BATCH).argmax(1) == y).mean() * 100)


def choices(loaded, threads: int, rounds: int) -> list[list[str]]:
    """The newest run: QOperator/QDQ x 200/1,000 calibration images, accuracy and speed of each."""
    pool, test, _ = run_data(loaded)
    x01 = to_unit(test.x).numpy()
    fp32 = fp32_graph(loaded)[0]
    models = {"fp32 (BN folded or 1x1 conv)": fp32}
    for fmt in ("qoperator", "qdq"):
        for n in (200, 1000):
            models[f"int8 {fmt}, {n} cal."] = quantize_onnx(fp32, calibration_sample(pool, n), fmt)
    speed = rates(models, x01, threads, rounds)
    return [[name, f"{accuracy(data, x01, test.y):.2f}", f"{len(data) / 1024:.1f}", f"{speed[name]:,.0f}"]
            for name, data in models.items()]


def spread(values: list[float]) -> str:
    return f"{min(values):.2f} / {median_value(values):.2f} / {max(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, action="append", required=True, help="a run store (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads for the speed figures")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default="int8.md")
    parser.add_argument("--grid", default="tiny8k,frontier15k",
                        help="networks whose newest run gets the QDQ/QOperator x calibration grid (comma-separated)")
    args = parser.parse_args()
    load_start, start = os.getloadavg(), time.perf_counter()
    found = find_runs(args.runs)
    registered = list_models()
    rows, choice_tables, missing = [], [], [n for n in NETWORKS if n not in found]
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        for name in [n for n in NETWORKS if n in found]:
            table = summarize(resolve_spec(name))
            mem = table.memory
            per_run, epochs = [], []
            for root, run_id in found[name]:
                store = copy_of(root, run_id, Path(tmp))
                loaded = load_run(run_id, store)
                epochs.append(int(loaded.config.get("epochs") or 0))
                report = export_int8(loaded, Path(tmp) / f"{run_id}.int8.onnx", threads=args.threads)
                x01 = to_unit(run_data(loaded)[1].x).numpy()
                fp32 = fp32_graph(loaded)[0]
                speed = rates({"fp32": fp32, "int8": Path(report.path).read_bytes()}, x01, args.threads, args.rounds)
                per_run.append((report, speed))
                print(f"{name} {run_id}: fp32 {report.fp32_acc:.2f} int8 {report.int8_acc:.2f} "
                      f"fp32 {speed['fp32']:,.0f}/s int8 {speed['int8']:,.0f}/s", flush=True)
            reports = [r for r, _ in per_run]
            recipes = ", ".join(f"{e}x{epochs.count(e)}" if epochs.count(e) > 1 else str(e)
                                for e in sorted(set(epochs)))
            rows.append([name, f"{registered[name].params:,}", str(len(reports)), recipes,
                         spread([r.fp32_acc for r in reports]), spread([r.int8_acc for r in reports]),
                         spread([r.drop for r in reports]),
                         f"{mem.weights_fp32 / 1024:.1f} / {mem.weights_int8 / 1024:.1f}",
                         f"{reports[-1].fp32_bytes / 1024:.1f} / {reports[-1].int8_bytes / 1024:.1f}",
                         f"{mem.peak_fp32 / 1024:.1f} / {mem.peak_int8 / 1024:.1f}",
                         f"{median_value([s['fp32'] for _, s in per_run]):,.0f} / "
                         f"{median_value([s['int8'] for _, s in per_run]):,.0f}"])
            if name in args.grid.split(","):
                newest = load_run(found[name][-1][1], Path(tmp) / f"store-{found[name][-1][1]}")
                choice_tables.append((name, newest.run_id, choices(newest, args.threads, args.rounds)))
    v = versions()
    head = ["network", "params", "runs", "epochs (x runs)", "fp32 test % (min / median / max)", "int8 test %", "drop, points (fp32 - int8; < 0: int8 better)",
            "table weights KiB fp32 / int8", "ONNX file KiB fp32 / int8", "table peak RAM KiB fp32 / int8",
            "images/s fp32 / int8 (median of runs)"]
    lines = [
        "# int8 export of the registered frontier networks",
        "",
        f"`PYTHONPATH=src nice -n 10 .venv/bin/python bench/bench_int8.py {' '.join('--runs ' + str(r) for r in args.runs)}"
        f" --threads {args.threads}` — {v['cpu']}, {v['cores']} cores shared with other jobs (load average "
        f"{load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end), onnxruntime {v['onnxruntime']}, "
        f"onnx {v['onnx']}, torch {v['torch']}, Python {v['python']}; {time.perf_counter() - start:.0f} s.",
        "",
        "Each run: `export_int8` defaults (BN folded, or a 1x1 depthwise conv where it cannot, QOperator, per-channel int8 weights, uint8 activations, MinMax "
        "calibration on 1,000 seeded training-split images), accuracy on all 10,000 MNIST test images. Speed: "
        f"onnxruntime CPU, {args.threads} thread(s), batch {TIMING_BATCH}, fp32 and int8 passes over the test set "
        f"alternated, best of {args.rounds} each; on a shared, loaded box these are rough. Table bytes: "
        "`convladder summary` (docs/analysis.md: int8 weights 1 B + an fp32 scale per output channel, BN and biases "
        "4 B; peak RAM by liveness, every result its own buffer). File sizes: the ONNX files (graph, names, "
        "activation scales and the fp32 softmax included).",
        "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
        "Runs: every completed run of the network in the stores given (their recipes as recorded; a run of fewer "
        "epochs than the network's own recipe (12) is a short one, its accuracy below what the network reaches). "
        f"Not in the stores given (not trained here, so not measured): {', '.join(missing) or 'none'}.",
        "",
        "## Choices, on the newest run of each network",
        "",
        "Same fp32 graph as export (BN folded, or a 1x1 depthwise conv where it cannot fold); accuracy on the 10,000 test images; speed as above (alternated, best of "
        f"{args.rounds}).",
        "",
    ]
    for name, run_id, table_rows in choice_tables:
        lines += [f"**{name}**, run {run_id}", "", "| model | test % | file KiB | images/s |", "|---|---|---|---|",
                  *["| " + " | ".join(r) + " |" for r in table_rows], ""]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / args.output, text)
    print(text)


if __name__ == "__main__":
    main()
