"""The whole data set as uint8 tensors on the training device; batches are index slices of a device permutation.

Keeping uint8 on the device (47 MB for MNIST) and normalising per batch there avoids a DataLoader,
worker processes and host-to-device copies per batch, which dominate the cost of tiny networks.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from convladder.data.datasets import DataSplits
from convladder.data.normalise import as_stat, channel_tensor, normalise, stat_channels, stat_ok
from convladder.errors import UserError
from convladder.train.config import TrainConfig, val_images


@lru_cache(maxsize=4)  # generation loops in Python; tests ask for the same set often
def synthetic_splits(n_train: int = 2048, n_test: int = 512, classes: int = 10, seed: int = 0) -> DataSplits:
    """A learnable, deterministic 28x28 uint8 data set: one smooth template per class, shifted and noised.

    A small CNN learns it to ~100 % in an epoch or two, so tests can check that training works.
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(classes, 1, 7, 7, generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=(28, 28), mode="bilinear", align_corners=False)[:, 0]

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % classes
        y = y[torch.randperm(n, generator=g)]
        x = templates[y] * 200 + torch.randn(n, 28, 28, generator=g) * 30
        shifts = torch.randint(-2, 3, (n, 2), generator=g)
        x = torch.stack([torch.roll(img, (int(a), int(b)), (0, 1)) for img, (a, b) in zip(x, shifts)])
        return x.clamp(0, 255).to(torch.uint8), y.to(torch.int64)

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    mean = float(x_train.float().mean() / 255)
    std = float(x_train.float().std() / 255)
    return DataSplits("synthetic", x_train, y_train, x_test, y_test, classes, mean, std)


def load_splits(config: TrainConfig):
    """The data set named in the config: 'synthetic' is generated here, anything else comes from convladder.data."""
    if config.dataset == "synthetic":
        return synthetic_splits()
    from convladder.data.datasets import (
        load_dataset,  # imported late: the data area owns downloads
    )

    return load_dataset(config.dataset, config.data_root, fetch=True)


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train/validation indices: the data area's seeded split."""
    from convladder.data.split import train_val_split

    train_idx, val_idx = train_val_split(n, val_size, seed)
    return torch.as_tensor(train_idx, dtype=torch.int64), torch.as_tensor(val_idx, dtype=torch.int64)


class DeviceData:
    """Train/val/test tensors on `device` (uint8 images (N, C, H, W), int64 labels)."""

    def __init__(self, splits, config: TrainConfig, device: torch.device):
        x_train, y_train = torch.as_tensor(splits.x_train), torch.as_tensor(splits.y_train)
        if x_train.dtype != torch.uint8 or x_train.dim() not in (3, 4):
            raise UserError(f"data set {splits.name}: images must be uint8 (N,H,W) or (N,C,H,W), got {x_train.dtype} "
                            f"{tuple(x_train.shape)}")
        channels = 1 if x_train.dim() == 3 else x_train.shape[1]
        mean, std = as_stat(splits.mean), as_stat(splits.std)
        if mean is None or std is None or not stat_ok(mean, std) or stat_channels(mean) not in (None, channels):
            raise UserError(f"data set {splits.name}: mean {splits.mean!r} / std {splits.std!r} do not fit its "
                            f"{channels}-channel images (one number, or one per channel; std > 0)")
        if config.subset:
            x_train, y_train = x_train[: config.subset], y_train[: config.subset]
        n = len(x_train)
        val_size = val_images(config)  # with --subset N at most N/10 validate (config.SUBSET_HELP)
        if val_size >= n:
            raise UserError(f"val_size {val_size} leaves no training images (data set has {n}); lower val_size")
        train_idx, val_idx = split_indices(n, val_size, config.split_seed) if val_size else (
            torch.arange(n), torch.arange(0))
        if config.train_images:  # after the split: the validation images are the ones a full run holds out
            if config.train_images > len(train_idx):
                raise UserError(f"train_images {config.train_images} is more than the {len(train_idx)} training images "
                                "left after the validation split; lower it (0 = all)")
            train_idx = train_idx[: config.train_images]
        if config.batch_size > len(train_idx):
            raise UserError(f"batch_size {config.batch_size} is larger than the {len(train_idx)} training images; lower it")
        self.device = device
        self.name = splits.name
        self.classes = int(splits.classes)
        self.mean, self.std = mean, std  # recorded in env.json as they are (a list per channel for colour)
        put = lambda t: t.to(device)  # noqa: E731
        chw = lambda t: t.unsqueeze(1) if t.dim() == 3 else t  # noqa: E731
        self.x_train, self.y_train = put(chw(x_train[train_idx])), put(y_train[train_idx])
        self.x_val, self.y_val = put(chw(x_train[val_idx])), put(y_train[val_idx])
        self.x_test = put(chw(torch.as_tensor(splits.x_test)))
        self.y_test = put(torch.as_tensor(splits.y_test))
        self.image_shape = tuple(self.x_train.shape[1:])
        # per-channel statistics as (C, 1, 1) tensors made once on the device: a CUDA graph reads them in place
        self._mean, self._std = channel_tensor(mean, self.x_train), channel_tensor(std, self.x_train)

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    def epoch_order(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """(steps, batch_size) training-image indices of one epoch, shuffled on the device.

        Every batch has the same size (static shapes for CUDA graphs and batched copies): the last
        n_train % batch_size images of each permutation are left out of that epoch. The permutation is
        redrawn every epoch, so no image is left out for good (MNIST, batch 128: 88 of 55,000 per epoch).
        """
        steps = self.steps_per_epoch(batch_size)
        perm = torch.randperm(self.n_train, generator=generator, device=self.device)
        return perm[: steps * batch_size].view(steps, batch_size)

    def steps_per_epoch(self, batch_size: int) -> int:
        return self.n_train // batch_size

    def normalise(self, x01: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> zero mean, unit std (the data set's statistics)."""
        return normalise(x01, self._mean, self._std)

