"""Seeded random networks for the receptive-field oracle (tests/rf_oracle.py, tests/test_field_oracle.py,
bench/bench_rf_oracle.py).

`random_net(seed)` writes a network the way people write them — `nn.Conv2d` with per-axis kernels, stride,
padding ('same'/'valid' too), dilation and groups; max/avg pools as modules and functions (ceil mode,
dilation); strided convolutions; residual adds (plain and downsampling); channel concatenations;
squeeze-excite gates `x * torch.sigmoid(x.mean((2, 3), keepdim=True))`; global-context adds; upsampling
(`nn.ConvTranspose2d`, `F.interpolate` nearest or bilinear, by scale factor or size) with UNet-style skips;
channel shuffles (view/transpose/view); and a head: `AdaptiveAvgPool2d(1)`, `x.mean((2, 3))`,
`nn.AvgPool2d(k)`/`nn.MaxPool2d(k)`/`F.avg_pool2d(x, x.shape[2:])` over the whole map, flatten + fc, or none.

The network is `Net`: `ops` (one module per operation, each its own table rows `ops.<i>...`) and `wiring`
(which earlier tensors each op reads; tensor 0 is the input). Every op is size-agnostic except the fixed-size
global pools and the fc, whose sizes `random_net` computes for the image it picks.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn


class Add(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class Mul(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


class Cat(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], 1)


class Mean(nn.Module):
    """x.mean((2, 3)) — a global mean (kept as a 1x1 map with keepdim)."""

    def __init__(self, keepdim: bool) -> None:
        super().__init__()
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=self.keepdim)


class Sigmoid(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)


class FPool(nn.Module):
    """F.max_pool2d / F.avg_pool2d written in forward."""

    def __init__(self, kind: str, k: int, s: int | None, p: int, d: int, ceil: bool) -> None:
        super().__init__()
        self.kind, self.k, self.s, self.p, self.d, self.ceil = kind, k, s, p, d, ceil

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "max":
            return F.max_pool2d(x, self.k, self.s, self.p, self.d, ceil_mode=self.ceil)
        return F.avg_pool2d(x, self.k, self.s, self.p, ceil_mode=self.ceil)


class WholeMapPool(nn.Module):
    """F.avg_pool2d(x, x.shape[2:]): global average pooling written as a pool the size of the map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, x.shape[2:])


class Interp(nn.Module):
    def __init__(self, scale: int, mode: str, by_size: bool) -> None:
        super().__init__()
        self.scale, self.mode, self.by_size = scale, mode, by_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.by_size:
            return F.interpolate(x, size=(x.shape[2] * self.scale, x.shape[3] * self.scale), mode=self.mode)
        return F.interpolate(x, scale_factor=self.scale, mode=self.mode)


class Shuffle(nn.Module):
    """ShuffleNet's channel shuffle: moves channels, never positions."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class Net(nn.Module):
    def __init__(self, ops: list[nn.Module], wiring: list[tuple[int, ...]]) -> None:
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.wiring = wiring

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x]
        for op, reads in zip(self.ops, self.wiring):
            outs.append(op(*[outs[i] for i in reads]))
        return outs[-1]


@dataclass
class T:
    """A tensor the generator can read: channels, height, width (0: a vector), crude field bound."""

    index: int
    c: int
    h: int
    w: int
    r: int
    j: tuple[Fraction, Fraction] = (Fraction(1), Fraction(1))  # jump: a skip joins a map of the same jump


class _Builder:
    def __init__(self, rng: random.Random, c: int, h: int, w: int) -> None:
        self.rng, self.ops, self.wiring = rng, [], []
        self.tensors = [T(0, c, h, w, 1)]
        self.image = max(h, w)
        self.ups = 0

    def add(self, op: nn.Module, reads: tuple[int, ...], c: int, h: int, w: int, r: int,
            scale: tuple[Fraction, Fraction] = (Fraction(1), Fraction(1))) -> T:
        self.ops.append(op)
        self.wiring.append(reads)
        j = self.tensors[reads[0]].j
        t = T(len(self.tensors), c, h, w, r, (j[0] * scale[0], j[1] * scale[1]))
        self.tensors.append(t)
        return t

    # -- building blocks ------------------------------------------------------------------------------------
    def conv(self, x: T, *, cout: int | None = None, keep: bool = False) -> T | None:
        rng = self.rng
        kh = rng.choice([1, 1, 2, 3, 3, 3, 4, 5, 7])
        kw = kh if rng.random() < 0.7 else rng.choice([1, 3, 5, 7])
        if keep:  # size-preserving (odd kernels, stride 1)
            kh, kw = kh | 1, kw | 1
        d = 1 if keep or rng.random() < 0.7 else rng.choice([2, 3])
        s = 1 if keep or rng.random() < 0.6 else rng.choice([2, 2, 3])
        sw = s if keep or rng.random() < 0.85 else rng.choice([1, 2])
        cout = cout or rng.randint(1, 4)
        groups = rng.choice([g for g in (1, 2, 4) if x.c % g == 0 and cout % g == 0])
        if keep:
            padding: object = (d * (kh - 1) // 2, d * (kw - 1) // 2) if rng.random() < 0.5 else "same"
        elif s == 1 and sw == 1 and rng.random() < 0.2:
            padding = rng.choice(["same", "valid"])
        else:
            padding = (rng.randint(0, kh // 2 + 1), rng.randint(0, kw // 2 + 1))
        ph, pw = (0, 0) if padding == "valid" else ((d * (kh - 1) // 2, d * (kw - 1) // 2) if padding == "same" else padding)
        h = (x.h + (d * (kh - 1) if padding == "same" else 2 * ph) - d * (kh - 1) - 1) // s + 1
        w = (x.w + (d * (kw - 1) if padding == "same" else 2 * pw) - d * (kw - 1) - 1) // sw + 1
        if h < 1 or w < 1:
            return None
        conv = nn.Conv2d(x.c, cout, (kh, kw), (s, sw), padding, (d, d), groups, bias=rng.random() < 0.5)
        return self.add(conv, (x.index,), cout, h, w, x.r + d * (max(kh, kw) - 1) * self.jump_bound(x),
                        (Fraction(s), Fraction(sw)))

    def jump_bound(self, x: T) -> int:
        return max(1, x.r // 3)  # a crude bound: fields grow with the jump; used only to keep fields small

    def pointwise(self, x: T) -> T:
        op = self.rng.choice([nn.ReLU(), nn.BatchNorm2d(x.c), nn.Dropout(0.1), Sigmoid()])
        return self.add(op, (x.index,), x.c, x.h, x.w, x.r)

    def pool(self, x: T) -> T | None:
        rng = self.rng
        kind = rng.choice(["max", "avg"])
        k = rng.choice([2, 2, 3, 4])
        s = rng.choice([None, 1, 2, 2])
        p = rng.randint(0, k // 2)
        d = rng.choice([1, 1, 2]) if kind == "max" else 1
        ceil = rng.random() < 0.3
        stride = s or k
        sizes = []
        for n in (x.h, x.w):
            span = (n + 2 * p - d * (k - 1) - 1) / stride
            out = (math.ceil(span) if ceil else math.floor(span)) + 1
            if ceil and (out - 1) * stride >= n + p:
                out -= 1
            sizes.append(out)
        if min(sizes) < 1:
            return None
        if rng.random() < 0.5:
            op: nn.Module = FPool(kind, k, s, p, d, ceil)
        elif kind == "max":
            op = nn.MaxPool2d(k, s, p, d, ceil_mode=ceil)
        else:
            op = nn.AvgPool2d(k, s, p, ceil_mode=ceil)
        return self.add(op, (x.index,), x.c, sizes[0], sizes[1], x.r + d * (k - 1) * self.jump_bound(x),
                        (Fraction(stride), Fraction(stride)))

    def residual(self, x: T) -> T | None:
        if self.rng.random() < 0.6:
            branch = self.conv(x, cout=x.c, keep=True)
            return self.add(Add(), (x.index, branch.index), x.c, x.h, x.w, branch.r) if branch else None
        cout = self.rng.randint(1, 4)  # downsampling block: 3x3/2 pad 1 beside a 1x1/2 shortcut
        a = self.add(nn.Conv2d(x.c, cout, 3, 2, 1), (x.index,), cout, (x.h - 1) // 2 + 1, (x.w - 1) // 2 + 1,
                     x.r + 2 * self.jump_bound(x), (Fraction(2), Fraction(2)))
        b = self.add(nn.Conv2d(x.c, cout, 1, 2), (x.index,), cout, a.h, a.w, x.r, (Fraction(2), Fraction(2)))
        return self.add(Add(), (a.index, b.index), cout, a.h, a.w, a.r)

    def concat(self, x: T) -> T | None:
        a, b = self.conv(x, keep=True), self.conv(x, keep=True)
        return self.add(Cat(), (a.index, b.index), a.c + b.c, x.h, x.w, max(a.r, b.r)) if a and b else None

    def gate(self, x: T) -> T:
        m = self.add(Mean(True), (x.index,), x.c, 1, 1, self.image)
        if self.rng.random() < 0.5:
            m = self.add(nn.Conv2d(x.c, x.c, 1), (m.index,), x.c, 1, 1, self.image)
        if self.rng.random() < 0.6:  # squeeze-excite
            g = self.add(Sigmoid(), (m.index,), x.c, 1, 1, self.image)
            return self.add(Mul(), (x.index, g.index), x.c, x.h, x.w, x.r)
        return self.add(Add(), (x.index, m.index), x.c, x.h, x.w, x.r)  # global-context add

    def upsample(self, x: T) -> T | None:
        rng = self.rng
        self.ups += 1
        if self.ups > 2:  # keeps the oracle's canvas small
            return None
        if rng.random() < 0.5:
            s = rng.choice([2, 2, 3])
            k = rng.randint(s, s + 2)
            p = rng.randint(0, (k - 1) // 2)
            out_pad = rng.choice([0, 0, 1]) if s > 1 else 0
            h, w = ((n - 1) * s - 2 * p + k + out_pad for n in (x.h, x.w))
            cout = rng.randint(1, 4)
            if max(h, w) > 48:  # keeps the oracle's canvas small
                return None
            up = self.add(nn.ConvTranspose2d(x.c, cout, k, s, p, out_pad), (x.index,), cout, h, w, x.r + k,
                          (Fraction(1, s), Fraction(1, s)))
        else:
            mode = rng.choice(["nearest", "bilinear"])
            s = rng.choice([2, 3]) if mode == "nearest" else rng.choice([2, 2, 4])
            by_size = rng.random() < 0.3
            if max(x.h, x.w) * s > 48:
                return None
            up = self.add(Interp(s, mode, by_size), (x.index,), x.c, x.h * s, x.w * s, x.r + 2,
                          (Fraction(1, s), Fraction(1, s)))
        # (a map of the same size but another jump would not line up: the table says '?' there, rightly)
        skips = [t for t in self.tensors[:-1] if t.w and (t.h, t.w, t.j) == (up.h, up.w, up.j)]
        if skips and rng.random() < 0.7:  # a UNet skip: the earlier map of the same size
            skip = rng.choice(skips)
            if skip.c == up.c and rng.random() < 0.5:
                return self.add(Add(), (skip.index, up.index), up.c, up.h, up.w, max(skip.r, up.r))
            return self.add(Cat(), (skip.index, up.index), skip.c + up.c, up.h, up.w, max(skip.r, up.r))
        return up

    def shuffle(self, x: T) -> T | None:
        return self.add(Shuffle(2), (x.index,), x.c, x.h, x.w, x.r) if x.c % 2 == 0 else None

    def head(self, x: T) -> None:
        rng = self.rng
        choice = rng.choice(["adaptive", "mean", "avgpool_k", "maxpool_k", "f_whole", "flatten_fc", "none"])
        if choice == "none":
            return
        if choice == "flatten_fc":
            flat = self.add(nn.Flatten(), (x.index,), x.c * x.h * x.w, 0, 0, self.image)
            self.add(nn.Linear(flat.c, 3), (flat.index,), 3, 0, 0, self.image)
            return
        if choice == "mean":
            v = self.add(Mean(False), (x.index,), x.c, 0, 0, self.image)
        else:
            op = {"adaptive": lambda: nn.AdaptiveAvgPool2d(1), "avgpool_k": lambda: nn.AvgPool2d((x.h, x.w)),
                  "maxpool_k": lambda: nn.MaxPool2d((x.h, x.w)), "f_whole": WholeMapPool}[choice]()
            pooled = self.add(op, (x.index,), x.c, 1, 1, self.image)
            v = self.add(nn.Flatten(), (pooled.index,), x.c, 0, 0, self.image)
        if rng.random() < 0.5:
            self.add(nn.Linear(v.c, 3), (v.index,), 3, 0, 0, self.image)


def random_net(seed: int) -> tuple[Net, tuple[int, int, int]]:
    """A seeded random network and the (C, H, W) input it is built for."""
    rng = random.Random(seed)
    c, h = rng.randint(1, 3), rng.randint(8, 24)
    w = h if rng.random() < 0.7 else rng.randint(8, 24)
    b = _Builder(rng, c, h, w)
    x = b.tensors[0]
    steps = rng.randint(2, 9)
    blocks = [b.conv, b.conv, b.conv, b.pool, b.residual, b.concat, b.gate, b.upsample, b.shuffle, b.pointwise]
    for _ in range(steps * 3):
        if steps == 0:
            break
        block = rng.choice(blocks)
        if block in (b.conv, b.pool, b.residual, b.upsample) and x.r > 2 * b.image:
            continue  # keep fields within a few images: the oracle's canvas stays small
        if x.h * x.w == 1:
            break  # one position left (the oracle does not extend a single broadcast position as a map)
        y = block(x)
        if y is not None:
            x, steps = y, steps - 1
    b.head(x)
    return Net(b.ops, b.wiring).eval(), (c, h, w)
