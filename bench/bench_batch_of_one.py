"""Can a single seed train as a batch of one at no cost? (issue 32 item 3; the figure is in docs/training.md)

One seed two ways, each through the one setup of train/runner.py, in interleaved rounds in one process (same
machine, same load): `single` (the model itself: what `train` runs) and `streams` (the seed as a batch of one
under the N-seed streams runner, `batched: streams`). Prints training images/s per epoch (the epoch's training,
evaluation apart) and whether each epoch's numbers equal the single run's bit for bit. (`grouped`, a one-copy
BatchedNet, does not train as is: its logits keep a copies axis that the one-copy loss of TrainStep does not
expect; so it is not a candidate without changing the step.)

    python bench/bench_batch_of_one.py --model tiny8k --subset 10000 --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from convladder.train.config import TrainConfig
from convladder.train.progress import Progress
from convladder.train.runenv import cpu_model
from convladder.train.runner import _epoch_runner, begin, load_data

WAYS = ("single", "streams")
TIMING = ("epoch_time_s", "train_time_s", "train_images_per_s")


def one_epoch(config: TrainConfig, splits, device: torch.device, way: str) -> tuple[float, dict]:
    """Train epoch 1 of config.seed the given way; (training images/s, the epoch's row without timings)."""
    mode = None if way == "single" else way
    prepared = _epoch_runner(config, splits, device, mode, {}, lambda text: None)
    rows, finite, te = prepared.runner.train_epoch(1, Progress())
    prepared.runner.evaluate_into(rows, 1, te)
    return rows[0]["train_images_per_s"], {k: v for k, v in rows[0].items() if k not in TIMING}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny8k")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--subset", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    config = TrainConfig(model=args.model, dataset=args.dataset, subset=args.subset, epochs=2, seed=1,
                         threads=args.threads, device=args.device, clean_train_eval=0)
    config, device = begin(config)
    splits = load_data(config)
    speeds: dict[str, list[float]] = {w: [] for w in WAYS}
    same: dict[str, bool] = {w: True for w in WAYS}
    t0 = time.perf_counter()
    for r in range(args.rounds):
        order = WAYS[r % 2:] + WAYS[:r % 2]  # each way goes first in every other round
        rows = {}
        for way in order:
            speed, rows[way] = one_epoch(config, splits, device, way)
            speeds[way].append(speed)
        for way in WAYS:
            same[way] &= rows[way] == rows["single"]
    print(f"{args.model}, {args.dataset} subset {args.subset}, batch {config.batch_size}, {args.threads} thread(s), "
          f"{device} ({cpu_model()}), {args.rounds} interleaved rounds, {time.perf_counter() - t0:.0f} s")
    base = statistics.median(speeds["single"])
    for way in WAYS:
        med = statistics.median(speeds[way])
        print(f"  {way:8s} median {med:7.0f} train images/s ({med / base - 1:+.1%} vs single; rounds "
              f"{', '.join(f'{s:.0f}' for s in speeds[way])}); epoch numbers = single's bit for bit: {same[way]}")


if __name__ == "__main__":
    main()
