"""Data parallel on the CPU: each batch split across N model replicas, stepped on N threads, one core each.

On 2 CPU cores one tiny8k model at batch 128 with 2 intra-op threads trained 2,600-3,300 images/s, two replicas
at batch 64 on two Python threads with 1 intra-op thread each 4,000-4,100 images/s together (torch's CPU ops
release the GIL; each thread's ops run on its own core instead of being split across both and synchronised
hundreds of times per step). This is `nn.DataParallel`'s scheme on CPU cores instead of GPUs:

- replica 0 is the run's model; replicas 1..N-1 are copies whose parameters and buffers are set from replica 0
  at the start of every epoch and whose parameters are set again after every step;
- the epoch's batch order and augmentation noise are drawn once from the run's generator, for whole batches;
  replica r takes images r, r+N, ... of each batch (`TrainStep(shard=(r, N))`);
- each replica computes its share's mean loss and gradients (BatchNorm normalises with the share's statistics,
  as in nn.DataParallel), the gradients are averaged into replica 0 — so the update is the whole batch's mean
  gradient — and replica 0's optimiser steps;
- dropout: every replica draws from its own generator (a spec's `Dropout.generator`), seeded from the run's
  seed, the epoch and the replica, so a run is reproducible and resumes bit for bit without saving their state;
- BatchNorm running statistics: each replica tracks its own; at the end of an epoch they are averaged into
  replica 0, which evaluation and the saved weights use.
"""

from __future__ import annotations

import contextlib
import copy
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator

import torch

from convladder.errors import UserError
from convladder.spec.build import Dropout, SpecNet
from convladder.train.config import TrainConfig
from convladder.train.step import TrainStep


def check_data_parallel(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> None:
    """Raise UserError where data_parallel > 1 cannot train this run."""
    n = config.data_parallel
    where = f"data_parallel={n}"
    if device.type != "cpu":
        raise UserError(f"{where} splits batches across CPU cores; on {device.type} use data_parallel=1")
    if config.batch_size % n:
        raise UserError(f"{where}: batch_size {config.batch_size} does not split into {n} equal shares; "
                        f"use a multiple of {n}")
    if config.compile or config.channels_last == "on":  # the replicas' steps use neither: refuse, never ignore
        raise UserError(f"{where} steps the replicas eagerly in the standard layout; drop "
                        f"{'compile' if config.compile else 'channels_last=on'} or use data_parallel=1")
    if not isinstance(model, SpecNet):
        raise UserError(f"{where} needs a network built from a spec (each replica's dropout draws from its own "
                        "generator); an own nn.Module trains with data_parallel=1 and threads instead")


class ParallelStep:
    """`TrainStep`'s interface for one model trained as `replicas` data-parallel replicas on threads."""

    def __init__(self, model: torch.nn.Module, data, config: TrainConfig, device: torch.device,
                 generator: torch.Generator, lr_table: list[float], momentum_table: list[float], replicas: int,
                 teacher=None):
        self.models = [model] + [copy.deepcopy(model) for _ in range(replicas - 1)]
        # teacher (config teacher): one frozen network in eval mode, each replica asks it about its own share
        self.replicas = [TrainStep(m, data, config, device, [generator], lr_table, momentum_table, shard=(r, replicas),
                                   teacher=teacher)
                         for r, m in enumerate(self.models)]
        self.main = self.replicas[0]
        self.generator, self.config, self.device = generator, config, device
        self.steps, self.batch_size = self.main.steps, config.batch_size
        # parameter and buffer lists made once: the step copies weights into the replicas every step
        self.params = [list(m.parameters()) for m in self.models]
        self.buffers = [list(m.buffers()) for m in self.models]
        self.dropout_generators = [torch.Generator() for _ in self.models]
        for m, gen in zip(self.models, self.dropout_generators):
            for layer in m.modules():
                if isinstance(layer, Dropout):
                    layer.generator = gen
        self.pool = ThreadPoolExecutor(max_workers=replicas - 1, thread_name_prefix="convladder-replica")

    # -- once per epoch -----------------------------------------------------------------------------------
    def new_epoch(self, crop: int = 0) -> None:
        """Set the replicas from replica 0, draw the epoch once and give each replica its shard; seed dropout."""
        epoch = int(self.main.t) // self.steps  # epochs done: resume continues with the same seeds
        for r, gen in enumerate(self.dropout_generators):
            gen.manual_seed(self.config.seed * 1_000_003 + epoch * 1_009 + r)
        self._copy_from_main(buffers=True)
        for m in self.models[1:]:
            m.train(self.models[0].training)  # the copies were made in whatever mode the model was in
        drawn = [self.main.draw_epoch(self.generator)]
        for step in self.replicas:
            step.new_epoch(crop, drawn)

    def read_epoch(self) -> tuple[list[float], list[float], int]:
        """The epoch's mean train loss and accuracy over all replicas' shares (one read); averages BN statistics."""
        seen = self.steps * self.batch_size
        loss = sum(float(s.loss_sum[0]) for s in self.replicas)
        correct = sum(int(s.correct[0]) for s in self.replicas)
        self._average_buffers()
        return [loss / seen], [100.0 * correct / seen], seen

    @property
    def crop(self) -> int:  # this epoch's crop size, as TrainStep.crop
        return self.main.crop

    @property
    def loss_sum(self) -> torch.Tensor:  # the progress display's running sums, over all replicas
        return sum(s.loss_sum for s in self.replicas)

    @property
    def correct(self) -> torch.Tensor:
        return sum(s.correct for s in self.replicas)

    def lr_at(self, t: int) -> float:
        return self.main.lr_at(t)

    def set_position(self, t: int) -> None:
        for step in self.replicas:
            step.set_position(t)

    def state(self) -> dict:
        return self.main.state()

    def load_state(self, optimizer_state: dict) -> None:
        self.main.load_state(optimizer_state)

    # -- the step -----------------------------------------------------------------------------------------
    def __call__(self) -> None:
        others = [self.pool.submit(step.backward) for step in self.replicas[1:]]
        self.main.backward()
        for job in others:
            job.result()  # re-raises a replica's exception here
        with torch.no_grad():
            grads = _grads(self.params[0])
            for params in self.params[1:]:
                torch._foreach_add_(grads, _grads(params))
            torch._foreach_mul_(grads, 1.0 / len(self.models))
        self.main.update()
        for step in self.replicas[1:]:
            step.k += 1  # the next batch; their optimisers never step
        self._copy_from_main(buffers=False)

    # -- keeping the replicas equal ------------------------------------------------------------------------
    @torch.no_grad()
    def _copy_from_main(self, buffers: bool) -> None:
        for r in range(1, len(self.models)):
            torch._foreach_copy_(self.params[r], self.params[0])
            if buffers and self.buffers[0]:  # a network without BatchNorm has none
                torch._foreach_copy_(self.buffers[r], self.buffers[0])

    @torch.no_grad()
    def _average_buffers(self) -> None:
        """Replica 0's float buffers (BatchNorm running mean/var) = the mean over the replicas."""
        for same in zip(*self.buffers):
            if same[0].is_floating_point():
                same[0].copy_(torch.stack(same).mean(0))


def _grads(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The gradients of the parameters the step trained (the same positions in every replica)."""
    return [p.grad for p in params if p.requires_grad and p.grad is not None]


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to n inside (evaluation uses every core; the replicas' steps one each)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
