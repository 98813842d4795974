"""Fuzz the spec parser: seeded mutations of real specs; every input must parse or raise UserError.

    .venv/bin/python bench/bench_fuzz_spec.py [--inputs 100000] [--seed 1] [--summarize-every 50]

Each input is a registered network's text (or a small spec) with 1-4 mutations: characters inserted, deleted or
duplicated; numbers replaced by boundary values (2**63, 4,301 digits, 1e999, nan, 0, -1, ...); tokens inserted,
swapped or renamed; layers repeated past the layer limit. What parses must print back to the same spec
(parse -> format -> parse), give the shape the analytic check says, and build and run on a tiny input (small
size limits) — or be refused there with UserError. Anything else is counted by kind and printed with an example.
The suite runs a few thousand inputs of the same fuzzer (tests/test_spec.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from convladder.errors import UserError
from convladder.spec.build import build_module, check_size
from convladder.spec.layers import KIND_ARGS
from convladder.spec.notation import format_spec, parse_spec
from convladder.spec.zoo import ZOO

SMALL = [
    "conv3x3(8) relu bn dropout(0.05) maxpool2x2 conv1x1(4) gap conv1x1(10) logsoftmax",
    "c1[conv3x3(8, stride=1, padding=1, dilation=1, groups=1, bias=false) leakyrelu(0.1) elu(alpha=0.5)] "
    "t1:transition[avgpool3x3(stride=2, padding=1, ceil_mode=true) maxpool2x2] "
    "out[gap flatten fc(12) prelu fc(10, bias=false) softmax]",
    "conv5x5(6, p=2, s=2) selu tanh sigmoid silu gelu -> conv3x3(4, d=2) > gap conv1x1(10) softmax # comment",
]
NUMBERS = ["0", "-1", "1", "+3", "007", "2", "3000", "65536", "65537", "2147483647", "2147483648",
           "9223372036854775807", "9223372036854775808", "18446744073709551616", "9" * 4301, "1" + "0" * 400,
           "1e999", "-1e999", "1e-999", "1e308", "5e-324", "0.5", "1.0", "-0.0", ".5", "1.", "1e3", "nan", "inf",
           "-inf", "0.9999999999999999", "1000.0001", "-1000"]
TOKENS = ["(", ")", "[", "]", ",", "=", ":", "->", ">", "#", " ", "\n", "stride=", "padding=", "p=", "bias=",
          "true", "false", "conv3x3", "conv1x1(", "maxpool2x2", "x", "_", "-", "+", ".", "e", "é", "\x00", "\t"]
KIND_NAMES = [k for k in sorted(KIND_ARGS) if k not in ("conv", "maxpool", "avgpool")] + [
    "conv3x3(8)", "conv1x1(10)", "maxpool2x2", "avgpool3x3", "conv7x7(4, padding=3)"]
ARG_NAMES = sorted({a for args in KIND_ARGS.values() for a in args}) + ["s", "p", "d", "g", "k", "ceil", "out", "slope"]
NAMES = sorted(KIND_ARGS) + sorted({a for args in KIND_ARGS.values() for a in args}) + [
    "conv3000x3000", "conv0x0", "conv3x5", "maxpool1x1", "avgpool9x9", "transition", "output", "convolution",
    "batchnorm", "swish", "linear", "dense", "s", "d", "g", "k", "ceil", "out", "slope"]
NUMBER = re.compile(r"(?<![A-Za-z0-9_.])[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")  # a value, not a name's digits
KERNEL = re.compile(r"(?<=conv|pool)\d+x\d+")
WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
TINY = (1, 28, 28)  # what a parsed spec is built and run on: two MNIST-sized images
LIMITS = {"max_params": 300_000, "max_activations": 2_000_000}


def corpus() -> list[str]:
    return [entry.text for entry in ZOO.values()] + SMALL


def mutate(text: str, rng: random.Random) -> str:
    """1-4 random edits of `text`."""
    for _ in range(rng.choice((1, 1, 1, 2, 3, 4))):
        op = rng.randrange(9)
        n = len(text)
        i, j = sorted((rng.randint(0, n), rng.randint(0, n)))
        j = min(j, i + rng.choice((1, 2, 5, 20)))
        if op == 0:  # a random character, mostly printable
            ch = chr(rng.randint(32, 126)) if rng.random() < 0.9 else chr(rng.randint(0, 0x2FF))
            text = text[:i] + ch + text[i:]
        elif op == 1:
            text = text[:i] + text[j:]
        elif op == 2:
            text = text[:j] + text[i:j] + text[j:]
        elif op in (3, 4):  # a number -> a boundary value (now and then a kernel size: conv{k}x{k})
            kernel = op == 4 and rng.random() < 0.3
            spans = [m.span() for m in (KERNEL if kernel else NUMBER).finditer(text)]
            if spans:
                a, b = rng.choice(spans)
                k = rng.choice(NUMBERS).lstrip("+-")
                text = text[:a] + (f"{k}x{k}" if kernel else rng.choice(NUMBERS)) + text[b:]
        elif op == 5:
            text = text[:i] + rng.choice(TOKENS + NUMBERS[:12]) + text[i:]
        elif op == 6:  # a word -> another word; mostly of its own sort (an argument name before '=')
            spans = [m.span() for m in WORD.finditer(text)]
            if spans:
                a, b = rng.choice(spans)
                arg = text[b:b + 1] == "="
                pool = NAMES if rng.random() < 0.3 else ARG_NAMES if arg else KIND_NAMES
                text = text[:a] + rng.choice(pool) + text[b:]
        elif op == 7:  # swap two pieces
            k, m = sorted((rng.randint(0, n), rng.randint(0, n)))
            text = text[:i] + text[k:m] + text[j:k] + text[i:j] + text[m:] if j <= k else text
        else:  # repeat a layer (sometimes past the layer limit) or cut the text
            if rng.random() < 0.5:
                text = text[: rng.randint(0, n)]
            else:
                text = text[:i] + " relu" * rng.choice((3, 50, 1001)) + text[i:]
    return text


@dataclass
class Tally:
    inputs: int = 0
    parsed: int = 0
    refused_parse: int = 0
    built: int = 0
    refused_build: int = 0
    summarized: int = 0
    other: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def crash(self, kind: str, text: str) -> None:
        self.other[kind] += 1
        self.examples.setdefault(kind, text[:160])


def _where(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return type(exc).__name__
    return f"{type(exc).__name__} at {os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"


def check_one(text: str, tally: Tally, summarize_every: int = 0, limits: dict[str, int] | None = None) -> None:
    """Parse `text`; what parses must round-trip, build and run on a tiny input, or be refused with UserError."""
    tally.inputs += 1
    try:
        spec = parse_spec(text)
    except UserError:
        tally.refused_parse += 1
        return
    except Exception as exc:  # noqa: BLE001 - counting what escapes is the point
        tally.crash(_where(exc), text)
        return
    tally.parsed += 1
    try:
        printed = format_spec(spec)
        if parse_spec(printed) != spec or format_spec(parse_spec(printed)) != printed:
            tally.crash("round trip differs", text)
            return
        tiny = spec.with_input(TINY)
        limits = limits or LIMITS
        try:
            expected = check_size(tiny, **limits).shapes[-1]
            model = build_module(tiny, **limits).eval()
            with torch.no_grad():
                out = model(torch.randn(2, *TINY))
        except UserError:
            tally.refused_build += 1
            return
        if tuple(out.shape[1:]) != tuple(expected):
            tally.crash(f"shape {tuple(out.shape[1:])} != analytic {tuple(expected)}", text)
            return
        tally.built += 1
        if summarize_every and tally.built % summarize_every == 1:
            from convladder.analysis.table import summarize  # analysis sits above spec: only the fuzzer reaches up

            try:
                table = summarize(tiny)
            except UserError:
                return
            if table.total_params != sum(p.numel() for p in model.parameters()):
                tally.crash("summary params differ", text)
            tally.summarized += 1
    except Exception as exc:  # noqa: BLE001
        tally.crash(_where(exc), text)


def fuzz(inputs: int, seed: int = 1, summarize_every: int = 0, limits: dict[str, int] | None = None) -> Tally:
    """Check `inputs` mutated specs; `limits` (build_module's keywords) bound what is built and run."""
    rng = random.Random(seed)
    seeds = corpus()
    tally = Tally()
    for _ in range(inputs):
        text = mutate(rng.choice(seeds), rng)
        check_one(text, tally, summarize_every, limits)
    return tally


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--summarize-every", type=int, default=50, help="summarize every Nth input that builds (0: never)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    tally = fuzz(args.inputs, args.seed, args.summarize_every)
    seconds = time.perf_counter() - t0
    try:
        from convladder.train.runenv import cpu_model

        cpu = cpu_model()
    except Exception:  # noqa: BLE001 - the machine line is informative only
        cpu = platform.processor() or platform.machine()
    rows = [
        ("machine", f"{cpu}, {os.cpu_count()} cores"), ("device", "cpu (1 torch thread)"),
        ("torch", torch.__version__), ("python", sys.version.split()[0]), ("seed", args.seed),
        ("inputs", f"{tally.inputs:,}"), ("parsed", f"{tally.parsed:,}"),
        ("refused with UserError at parse", f"{tally.refused_parse:,}"),
        ("built and ran on 2 images of 28x28", f"{tally.built:,}"), ("summarized", f"{tally.summarized:,}"),
        ("refused with UserError at size check/build", f"{tally.refused_build:,}"),
        ("other exceptions", f"{sum(tally.other.values()):,}"), ("time", f"{seconds:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    for kind, count in tally.other.most_common():
        print(f"  {count:>7,}  {kind}  e.g. {tally.examples[kind]!r}")


if __name__ == "__main__":
    main()
