"""A held-out validation split taken from the training set."""

from __future__ import annotations

import torch

from convladder.errors import UserError


def train_val_split(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint (train_idx, val_idx) LongTensors covering range(n), deterministic for `seed`.

    Uses its own generator, so the global torch RNG is left untouched. Both index
    tensors are sorted, which keeps memory access in order when gathering.
    """
    if n <= 0:
        raise UserError(f"cannot split an empty training set (n={n})")
    if not 0 <= val_size < n:
        raise UserError(f"validation size {val_size} must be between 0 and {n - 1} (training set has {n})")
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    val_idx, _ = perm[:val_size].sort()
    train_idx, _ = perm[val_size:].sort()
    return train_idx, val_idx
