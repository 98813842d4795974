"""GPU benchmark in one call: the trainer eager vs CUDA-graph, batch sizes, 1 seed vs N seeds at once (grouped
convolutions, or N models on parallel streams of one CUDA graph), and two plain-torch reference recipes measured
in the same process. Prints ONE table; writes it to
bench/results/gpu-<device>.md (and to $OUT when set).

    CONVLADDER_HOME=.cache/convladder PYTHONPATH=src python bench/bench_gpu.py            # on the GPU machine
    PYTHONPATH=src python bench/bench_gpu.py --device cpu --dry-run                       # check it here (tiny)

Times: "to 99.0/99.4" = train.result.TIME_TO_TARGET, the definition the trainer's result and bench_train.py
use: training + evaluation time from the first step to the end of the first epoch whose test accuracy reached
it, with the one-time warm-up (first step, or warm-up steps + graph capture) taken out and reported in its own
column. images/s = training images per second summed over copies (the median epoch, from epoch 2 when there is
one). Medians: train.result.MEDIAN_RULE. --seeds takes a seed list (6-15) as bench_train.py does; a configuration
of k seeds trains the first k of it. Configurations run in order until --budget seconds are spent; the rest are
listed as skipped. A configuration that raises is one row with its error; the others still run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convladder.train.config import TrainConfig
from convladder.train.loop import parse_seed_list, resolve_device, train_batched, train_epochs
from convladder.train.progress import Progress
from convladder.train.result import MEDIAN_RULE, TIME_TO_TARGET, median_value, min_median_max, time_to
from convladder.train.runenv import cpu_model

RESULTS = Path(__file__).parent / "results"


class Rows(Progress):
    """Collects epoch rows per run (batched copies report in seed order each epoch) and notices."""

    def __init__(self) -> None:
        self.runs: list[list[dict[str, Any]]] = []
        self.notes: list[str] = []
        self._next = 0

    def start(self, info: dict[str, Any]) -> None:
        self.runs.append([])

    def epoch_end(self, row: dict[str, Any]) -> None:
        self.runs[self._next % len(self.runs)].append(row)
        self._next += 1

    def note(self, text: str) -> None:
        self.notes.append(text)
        print("  note:", text, flush=True)


def _mmm(values: list[float | None], fmt: str = "{:.2f}") -> str:
    s = min_median_max(values)
    if s is None:
        return f"- (0/{len(values)})" if values else "-"
    have = sum(v is not None for v in values)
    if have == 1 and len(values) == 1:
        return fmt.format(s["min"])
    text = " / ".join(fmt.format(s[k]) for k in ("min", "median", "max"))
    return text + (f" ({have}/{len(values)})" if have < len(values) else "")


def _median(values: list[float | None]) -> float:
    value = median_value(values)
    assert value is not None
    return value


def contiguous(seeds: list[int]) -> bool:
    return seeds == list(range(seeds[0], seeds[0] + len(seeds)))


def run_trainer(name: str, base: dict[str, Any], seeds: list[int], batched: str | None,
                cut: int | None) -> dict[str, Any]:
    """One configuration of the convladder trainer; seeds one after another, or at once (batched: grouped/streams)."""
    rows = Rows()
    t0 = time.perf_counter()
    warmups: list[float] = []
    if batched:  # the batched trainer takes seeds seed .. seed + seeds - 1 (main checks the list is a range)
        cfg = TrainConfig.from_dict({**base, "seed": seeds[0], "seeds": len(seeds), "batched": batched})
        results = train_batched(cfg, None, rows)
        warmups = [results[0].warmup_s] * len(results)
        per_run = rows.runs
    else:
        per_run = []
        for seed in seeds:
            cfg = TrainConfig.from_dict({**base, "seed": seed})
            sub = Rows()
            gen = train_epochs(cfg, None, sub)
            done = 0
            while True:
                try:
                    next(gen)
                except StopIteration as stop:  # the run completed: its RunResult has the measured warm-up
                    warmups.append(stop.value.warmup_s)
                    break
                done += 1
                if cut and done >= cut:
                    gen.close()
                    warmups.append(_warmup_of(sub.runs[0]))
                    break
            per_run.append(sub.runs[0])
            rows.notes += sub.notes
    wall = time.perf_counter() - t0
    epoch_rows = [r for run in per_run for r in run]
    later = [r for r in epoch_rows if r["epoch"] > 1] or epoch_rows
    copies = len(seeds) if batched else 1
    ips = _median([r["train_images_per_s"] for r in later]) * copies
    s_epoch = _median([r["epoch_time_s"] for r in later])
    finals = [run[-1].get("test_acc") if run else None for run in per_run]
    full = cut is None
    return {
        "name": name, "seeds": len(seeds), "seed_list": seeds, "batch": base.get("batch_size", 128), "ips": ips,
        "s_epoch": s_epoch, "warmup": median_value(warmups),
        "t990": [time_to(run, 99.0, w) for run, w in zip(per_run, warmups)] if full else None,
        "t994": [time_to(run, 99.4, w) for run, w in zip(per_run, warmups)] if full else None,
        "finals": finals if full else None, "epochs": len(per_run[0]) if per_run else 0,
        "wall": wall, "notes": rows.notes, "cut": cut,
    }


def _warmup_of(run_rows: list[dict[str, Any]]) -> float:
    # train_epochs' RunResult is not returned when the generator is closed early; the first epoch's excess over
    # the median epoch is the warm-up (the step runner measures it exactly when the run completes)
    if len(run_rows) < 2:
        return 0.0
    first = run_rows[0]["epoch_time_s"]
    rest = _median([r["epoch_time_s"] for r in run_rows[1:]])
    return max(0.0, first - rest)


# -- plain-torch reference recipes (no torchvision, no convladder code in the training) -----------------------

class FastNet(nn.Module):
    """Our re-creation of a known fast MNIST recipe's network: ~215k params (conv 5x5x24, conv 3x3x32, fc 256)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 24, 5), nn.BatchNorm2d(24)
        self.c2, self.b2 = nn.Conv2d(24, 32, 3), nn.BatchNorm2d(32)
        self.f1, self.f2 = nn.Linear(32 * 5 * 5, 256), nn.Linear(256, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)
        x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)
        return self.f2(F.relu(self.f1(x.flatten(1))))


class ExamplesNet(nn.Module):
    """pytorch/examples mnist Net (1.2M params)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
        self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
        self.fc1, self.fc2 = nn.Linear(9216, 128), nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = torch.flatten(self.dropout1(x), 1)
        return F.log_softmax(self.fc2(self.dropout2(F.relu(self.fc1(x)))), dim=1)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _test_acc(model, xt, yt, batch=1000):
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(xt[i:i + batch]).argmax(1) == yt[i:i + batch]).sum()) for i in range(0, len(yt), batch))
    model.train()
    return 100.0 * correct / len(yt)


def fast_recipe(x, y, xt, yt, device, seeds: list[int], steps_cap: int | None) -> dict[str, Any]:
    """One epoch, batch 128, Adam + OneCycle (max lr 0.01), data on the device; the first (warm-up) run untimed."""
    times, accs = [], []
    bs = 128
    steps = len(y) // bs if steps_cap is None else min(steps_cap, len(y) // bs)
    for run, seed in enumerate([0, *seeds]):  # seed 0: the untimed warm-up run
        torch.manual_seed(seed)
        model = FastNet().to(device)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=steps, pct_start=0.25)
        _sync(device)
        t = time.perf_counter()
        perm = torch.randperm(len(y), device=device)
        for i in range(steps):
            idx = perm[i * bs:(i + 1) * bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = _test_acc(model, xt, yt)  # includes the test pass, as the trainer's times do
        _sync(device)
        if run > 0:
            times.append(time.perf_counter() - t)
            accs.append(acc)
    params = sum(p.numel() for p in FastNet().parameters())
    return {"name": f"fast recipe re-created ({params:,} params, 1 epoch, b128, Adam onecycle)", "seeds": len(seeds),
            "batch": bs, "t": times, "finals": accs, "epochs": 1}


def examples_recipe(x, y, xt, yt, device, epochs: int, full_epochs: int, steps_cap: int | None) -> dict[str, Any]:
    """pytorch/examples mnist: Adadelta lr 1.0, StepLR(1, 0.7), batch 64, test each epoch; data on the device."""
    torch.manual_seed(1)
    model = ExamplesNet().to(device)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    bs = 64
    steps = len(y) // bs if steps_cap is None else min(steps_cap, len(y) // bs)
    epoch_times, accs = [], []
    for _ in range(epochs):
        _sync(device)
        t = time.perf_counter()
        perm = torch.randperm(len(y), device=device)
        for i in range(steps):
            idx = perm[i * bs:(i + 1) * bs]
            loss = F.nll_loss(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        accs.append(_test_acc(model, xt, yt))
        _sync(device)
        epoch_times.append(time.perf_counter() - t)
    per_epoch = _median(epoch_times[1:] or epoch_times)
    est = sum(epoch_times) + per_epoch * (full_epochs - epochs)
    cum, t99 = 0.0, None
    for t, a in zip(epoch_times, accs):
        cum += t
        if t99 is None and a >= 99.0:
            t99 = cum
    return {"name": f"pytorch/examples recipe (1.2M params, Adadelta, b64), {epochs} of {full_epochs} epochs"
                    + (f", {full_epochs}-epoch time extrapolated" if epochs < full_epochs else ""),
            "seeds": 1, "batch": bs, "s_epoch": per_epoch, "wall_full": est, "finals": [accs[-1]], "t990": t99,
            "epochs": epochs, "ips": steps * bs / per_epoch}


def _load_tensors(device, subset: int):
    from convladder.data.datasets import load_dataset

    d = load_dataset("mnist")
    mean, std = 0.1307, 0.3081
    x = torch.as_tensor(d.x_train).to(device).float().div_(255).sub_(mean).div_(std).unsqueeze(1)
    y = torch.as_tensor(d.y_train).to(device)
    xt = torch.as_tensor(d.x_test).to(device).float().div_(255).sub_(mean).div_(std).unsqueeze(1)
    yt = torch.as_tensor(d.y_test).to(device)
    if subset:
        x, y, xt, yt = x[:subset], y[:subset], xt[:subset // 3], yt[:subset // 3]
    return x, y, xt, yt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes (subset, 2 epochs, 2 seeds): checks the script")
    ap.add_argument("--budget", type=float, default=230.0, help="seconds; configurations after it are skipped")
    ap.add_argument("--seeds", default="1-10", help="seed list: 6-15, 1,3,7 (default 1-10; a range where seeds "
                    "train at once)")
    ap.add_argument("--examples-epochs", type=int, default=3, help="pytorch/examples epochs run (of 14; rest extrapolated)")
    ap.add_argument("--long", action="store_true", help="also: pytorch/examples full 14 epochs, more variants")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="also write the table here")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True  # for the reference recipes too (the trainer turns it on for CUDA)
    dev_name = str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    dry = args.dry_run
    seed_list = parse_seed_list(args.seeds)[:2] if dry else parse_seed_list(args.seeds)
    if not contiguous(seed_list):  # the batched configurations train seeds seed .. seed + N - 1
        sys.exit(f"error: --seeds {args.seeds}: the batched configurations need a range of seeds (e.g. 6-15)")
    seeds = len(seed_list)
    common: dict[str, Any] = {"device": args.device, "model": "tiny8k", "clean_train_eval": 0}
    if dry:
        common.update(subset=3000, val_size=500, epochs=2, threads=0)
    b512 = {"batch_size": 512, "lr": 0.4}
    b256 = {"batch_size": 256, "lr": 0.2}
    configs: list[tuple[str, dict[str, Any], int, str | None, int | None]] = [
        # name, overrides, seeds, batched (None: one after another; grouped; streams), epochs cut (None: full)
        ("graph b128 lr 0.1 (defaults)", {}, 1 if dry else 3, None, None),
        ("eager b512 lr 0.4", {**b512, "cuda_graphs": "off"}, 1, None, None if dry else 3),
        ("graph b512 lr 0.4", b512, seeds, None, None),
        (f"graph b512 lr 0.4, {seeds} seeds streams", b512, seeds, "streams", None),
        (f"graph b512 lr 0.4, {seeds} seeds batched", b512, seeds, "grouped", None),
        (f"graph b128 lr 0.1, {seeds} seeds streams", {}, seeds, "streams", None),
        (f"graph b128 lr 0.1, {seeds} seeds batched", {}, seeds, "grouped", None),
        # recipes aimed at "median <= 1.5 s to 99.4 % with every one of 10 seeds >= 99.4"
        (f"graph b512 lr 0.4, 15 epochs, {seeds} seeds streams", {**b512, "epochs": 15}, seeds, "streams", None),
        (f"graph b256 lr 0.2, {seeds} seeds streams", b256, seeds, "streams", None),
        ("graph b512 lr 0.4, 9 epochs", {**b512, "epochs": 9}, 1 if dry else 5, None, None),
        ("graph b1024 lr 0.8", {"batch_size": 1024, "lr": 0.8}, 1 if dry else 5, None, None),
    ]
    if args.long:
        configs += [("eager b128 lr 0.1 (defaults)", {"cuda_graphs": "off"}, 1, None, None if dry else 3),
                    (f"eager b512 lr 0.4, {seeds} seeds batched", {**b512, "cuda_graphs": "off"}, seeds, "grouped",
                     None if dry else 2),
                    ("graph b256 lr 0.2", b256, seeds, None, None)]
    if dry:
        configs = [(n, {**o, "epochs": 2}, s, b, c) for n, o, s, b, c in configs]

    results: list[dict[str, Any]] = []
    # a dry run is no measurement: its table goes to the temp folder, not bench/results/
    folder = Path(os.environ.get("TMPDIR", "/tmp")) if dry else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / (f"gpu-{device.type}{'-dry' if dry else ''}.md")

    def write() -> str:  # after every configuration: a hard timeout still leaves what finished
        text = render(results, refs, dev_name, dry, time.perf_counter() - t_start, seed_list)
        out.write_text(text)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / out.name).write_text(text)
        return text

    print(f"bench_gpu on {dev_name}, torch {torch.__version__}", flush=True)
    x, y, xt, yt = _load_tensors(device, 3000 if dry else 0)
    refs: list[dict[str, Any]] = []
    try:  # the reference recipes first: they are the yardstick, and cheap
        refs.append(fast_recipe(x, y, xt, yt, device, seed_list, 5 if dry else None))
        print("  ", refs[-1]["name"], [f"{t:.3f}s" for t in refs[-1]["t"]], refs[-1]["finals"], flush=True)
    except Exception as exc:  # noqa: BLE001 - a row with the error instead
        refs.append({"name": "fast recipe", "error": f"{type(exc).__name__}: {exc}"})
    try:
        ex_epochs = 14 if args.long else (1 if dry else args.examples_epochs)
        refs.append(examples_recipe(x, y, xt, yt, device, ex_epochs, 14, 5 if dry else None))
        print("  ", refs[-1]["name"], f"{refs[-1]['s_epoch']:.2f}s/epoch", refs[-1]["finals"], flush=True)
    except Exception as exc:  # noqa: BLE001
        refs.append({"name": "pytorch/examples recipe", "error": f"{type(exc).__name__}: {exc}"})
    del x, y, xt, yt

    for name, overrides, n_seeds, batched, cut in configs:
        spent = time.perf_counter() - t_start
        if spent > args.budget:
            results.append({"name": name, "skipped": f"time budget ({spent:.0f} s of {args.budget:.0f} spent)"})
            continue
        print(f"[{spent:6.1f}s] {name}: {n_seeds} seed(s){' at once: ' + batched if batched else ''}", flush=True)
        try:
            res = run_trainer(name, {**common, **overrides}, seed_list[:n_seeds], batched, cut)
            res["cut"] = cut
        except Exception as exc:  # noqa: BLE001 - one row with the error; the others still run
            traceback.print_exc()
            res = {"name": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        results.append(res)
        write()
        if "error" not in res:
            print(f"    {res['ips']:.0f} img/s, {res['s_epoch']:.3f} s/epoch, warm-up {res['warmup']:.2f}s, "
                  f"finals {res['finals']}, wall {res['wall']:.1f}s", flush=True)

    print(write())
    print(f"written to {out}" + (f" and {args.out}" if args.out else ""))
    return 0


def render(results, refs, dev_name, dry, total_s, seed_list: list[int]) -> str:
    head = [f"# GPU benchmark — {dev_name}" + (" — DRY RUN (tiny sizes, not a measurement)" if dry else ""), "",
            f"- machine: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, python "
            f"{sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M')}; whole benchmark {total_s:.0f} s",
            "- tiny8k (7,944 params), MNIST, 5,000 validation images held out, augmentation on, bf16 autocast on CUDA, "
            f"SGD Nesterov OneCycle, 12 epochs unless said; seeds {seed_list[0]}-{seed_list[-1]} (a configuration of "
            "k seeds: the first k)",
            f"- to 99.0 / 99.4: {TIME_TO_TARGET} (the trainer's and bench_train.py's clock); min / median / max "
            "over seeds, (k/N) when only k seeds reached it, the spread over those k",
            f"- {MEDIAN_RULE}",
            "- images/s: training images per second summed over copies, median epoch after the first; "
            "'cut': only the first epochs of the 12-epoch schedule ran (speed only)", "",
            "| configuration | seeds | images/s | s/epoch | warm-up s | to 99.0 % s | to 99.4 % s | final test % (min/med/max) | seeds >= 99.4 | wall s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    lines = []
    for r in results:
        if "skipped" in r or "error" in r:
            lines.append(f"| {r['name']} | | | | | | | {r.get('skipped') or r.get('error')} | | |")
            continue
        cut = f" (cut: {r['epochs']} epochs)" if r.get("cut") else ""
        finals = r["finals"]
        reached = f"{sum(1 for f in finals if f is not None and f >= 99.4)}/{len(finals)}" if finals else "-"
        lines.append(f"| {r['name']}{cut} | {r['seeds']} | {r['ips']:,.0f} | {r['s_epoch']:.3f} | {r['warmup']:.2f} | "
                     f"{_mmm(r['t990']) if r['t990'] else '-'} | {_mmm(r['t994']) if r['t994'] else '-'} | "
                     f"{_mmm(finals) if finals else '-'} | {reached} | {r['wall']:.1f} |"
                     + (f" notes: {'; '.join(r['notes'])}" if r.get("notes") else ""))
    ref_lines = ["", "Reference recipes (plain torch, same process, data on the device):", ""]
    for r in refs:
        if "error" in r:
            ref_lines.append(f"- {r['name']}: {r['error']}")
        elif "t" in r:
            ref_lines.append(f"- {r['name']}: {_mmm(r['t'], '{:.3f}')} s per run incl. test pass (min/median/max over "
                             f"{r['seeds']} seeds, first run untimed as warm-up); test {_mmm(r['finals'])} %")
        else:
            t99 = "-" if r["t990"] is None else f"{r['t990']:.1f} s"
            ref_lines.append(f"- {r['name']}: {r['s_epoch']:.2f} s/epoch ({r['ips']:,.0f} images/s), test after "
                             f"{r['epochs']} epoch(s) {r['finals'][-1]:.2f} %, to 99.0 % {t99}, "
                             f"14 epochs ~{r['wall_full']:.1f} s (training + evaluation; its first epoch's warm-up "
                             "included)")
    ratio_lines = ["", "Ratios (same process):", ""]
    fast = next((r for r in refs if "t" in r and r["t"]), None)
    ex = next((r for r in refs if "wall_full" in r), None)
    for r in results:
        if "t994" not in r or not r.get("t994"):
            continue
        t94 = [t for t in r["t994"] if t is not None]
        t90 = [t for t in (r["t990"] or []) if t is not None]
        parts = []
        if fast and t90:
            parts.append(f"to 99.0 % median {_median(t90):.2f} s vs fast recipe {_median(fast['t']):.2f} s "
                         f"({_median(t90) / _median(fast['t']):.2f}x)")
        if ex and t94:
            parts.append(f"to 99.4 % median {_median(t94):.2f} s vs pytorch/examples 14 epochs ~{ex['wall_full']:.0f} s "
                         f"({ex['wall_full'] / _median(t94):.0f}x faster)")
        if parts:
            lines_name = r["name"]
            ratio_lines.append(f"- {lines_name}: " + "; ".join(parts))
    one = next((r for r in results if r.get("name") == "graph b512 lr 0.4" and "wall" in r), None)
    for how in ("streams", "batched"):
        many = next((r for r in results if r.get("name", "").startswith("graph b512 lr 0.4, ")
                     and r["name"].endswith(f"seeds {how}") and "wall" in r), None)
        if one and many:
            per_seed = one["wall"] / one["seeds"]
            ratio_lines.append(f"- {many['seeds']} seeds {how}: {many['wall']:.1f} s wall vs {per_seed:.1f} s for one "
                               f"seed alone ({many['wall'] / per_seed:.2f}x the time of one seed, for "
                               f"{many['seeds']} seeds; goal <= 2x)")
    return "\n".join(head + lines + ref_lines + ratio_lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
