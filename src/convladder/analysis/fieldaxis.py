"""The data of a receptive field (see `analysis.field`): `Axis`, each position's window of input pixels along
one axis, repeating with a period; `Field`, a node's two axes, jump, layout and the box a global reduction
saw; and the window arithmetic the per-op rules (`analysis.fieldops`) apply."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction

Pair = tuple[int, int]
Window = tuple[int, int]
_FAR = 1 << 40
NOTHING: Window = (_FAR, -_FAR)  # a position that reads no input pixel


def _moved(w: Window, by: int) -> Window:
    return w if w[0] >= w[1] else (w[0] + by, w[1] + by)


def cover(windows: list[Window]) -> Window:
    lo, hi = min(w[0] for w in windows), max(w[1] for w in windows)
    return (lo, hi) if lo < hi else NOTHING


@dataclass(frozen=True)
class Axis:
    """Position q along one axis sees input pixels `window(q)`: the windows of q = 0..P-1, repeated `shift`
    pixels further on every P positions (P = 1 except after upsampling)."""

    windows: tuple[Window, ...]
    shift: int

    def window(self, q: int) -> Window:
        turns, phase = divmod(q, len(self.windows))
        return _moved(self.windows[phase], turns * self.shift)

    @property
    def jump(self) -> Fraction:
        return Fraction(self.shift, len(self.windows))


def _axis(windows: list[Window], shift: int) -> Axis:
    """The axis of these windows (one period) in its shortest period."""
    n = len(windows)
    for p in range(1, n):
        if n % p == 0 and (shift * p) % n == 0:
            step = shift * p // n
            if all(_moved(windows[i], step) == windows[i + p] for i in range(n - p)):
                return Axis(tuple(windows[:p]), step)
    return Axis(tuple(windows), shift)


def through(axis: Axis, k: int, s: int, p: int, d: int) -> Axis:
    """A window of k taps (dilation d, stride s, padding p): output o reads inputs o*s - p + t*d."""
    period = len(axis.windows) // math.gcd(len(axis.windows), s)
    shift = axis.shift * (period * s // len(axis.windows))
    return _axis([cover([axis.window(o * s - p + t * d) for t in range(k)]) for o in range(period)], shift)


def transposed(axis: Axis, k: int, s: int, p: int, d: int) -> Axis:
    """A transposed convolution: input i adds into outputs i*s - p + t*d (a nearest upsampling by s is k = s)."""
    period = len(axis.windows) * s
    reads = [[(o + p - t * d) // s for t in range(k) if (o + p - t * d) % s == 0] for o in range(period)]
    return _axis([cover([axis.window(i) for i in r]) if r else NOTHING for o, r in enumerate(reads)], axis.shift)


def bilinear(axis: Axis, s: int) -> Axis:
    """Bilinear upsampling by a whole factor s, align_corners=False: output o reads the two inputs around
    (o + 0.5)/s - 0.5 (one when it falls on an input: the other's weight is 0)."""
    windows = []
    for o in range(len(axis.windows) * s):
        num, den = 2 * o + 1 - s, 2 * s
        reads = [num // den] + ([num // den + 1] if num % den else [])
        windows.append(cover([axis.window(i) for i in reads]))
    return _axis(windows, axis.shift)


def union_axes(axes: list[Axis]) -> Axis:
    period = math.lcm(*(len(a.windows) for a in axes))
    shift = axes[0].shift * period // len(axes[0].windows)
    return _axis([cover([a.window(q) for a in axes]) for q in range(period)], shift)


@dataclass(frozen=True)
class Field:
    """What each output value of a node sees of the input."""

    axes: tuple[Axis, Axis] | None  # each position's window (height, width); None: no local part, or unknown
    step: tuple[Fraction, Fraction] | None  # jump: input pixels between neighbouring positions; None = unknown
    # map (N,C,H,W) | flat (positions folded into features) | vector (one value per feature)
    # | mixed (a map whose every value sees the same union of positions, e.g. after a softmax over them)
    layout: str = "map"
    grid: Pair = (1, 1)  # the positions the values still come from (for a later union)
    reason: str = ""  # why the field is unknown
    image: Pair = (1, 1)  # the input's size, which a union of fields cannot exceed
    glob: tuple[Window, Window] | None = None  # the box a global reduction saw, seen by every position

    @property
    def known(self) -> bool:
        return self.axes is not None or self.glob is not None

    def extents(self) -> tuple[Pair, Pair] | None:
        """(smallest, largest) field over the positions, per axis; None where unknown or a position sees nothing."""
        if not self.known:
            return None
        out = []
        for a in range(2):
            sizes = set()
            for q in range(self.grid[a] if self.axes is not None else 1):
                lo, hi = self.axes[a].window(q) if self.axes is not None else NOTHING
                if self.glob is not None:  # the whole box and the own window, clipped: padding is not input
                    lo, hi = max(0, min(lo, self.glob[a][0])), min(self.image[a], max(hi, self.glob[a][1]))
                if lo >= hi:
                    return None
                sizes.add(hi - lo)
            out.append((min(sizes), max(sizes)))
        return out[0], out[1]

    @property
    def r(self) -> Pair | None:
        """The field (height, width) when every position has the same; None when unknown or it varies."""
        ext = self.extents()
        if ext is None or ext[0][0] != ext[0][1] or ext[1][0] != ext[1][1]:
            return None
        return ext[0][0], ext[1][0]

    @property
    def j(self) -> Pair | None:
        """The jump (height, width) when it is a whole number of pixels."""
        if self.step is None or any(s.denominator != 1 for s in self.step):
            return None
        return int(self.step[0]), int(self.step[1])

    def union(self) -> Field:
        """Every position combined: the field of a global reduction, the part of the input it covers."""
        box = []
        for a in range(2):
            seen = [self.axes[a].window(q) for q in range(self.grid[a])] if self.axes is not None else []
            lo, hi = cover(seen + ([self.glob[a]] if self.glob is not None else []))
            box.append((max(0, lo), min(self.image[a], hi)))
        if any(lo >= hi for lo, hi in box):
            return unknown("a global reduction of positions that see no input pixel")
        return replace(self, axes=None, glob=(box[0], box[1]), grid=(1, 1))


def unknown(reason: str) -> Field:
    return Field(None, None, reason=reason)
