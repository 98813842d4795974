"""N copies of one network trained as one module: grouped convolutions, one image stream per copy.

`widen(models)` packs N built networks of the same spec (each initialised with its own seed) into a
`BatchedNet`: every conv gets N x the channels and N x the groups, so copy i's channels only ever see copy
i's channels; BatchNorm normalises N x C channels (per channel, so per copy); fully connected layers become
block-diagonal (`GroupedLinear`); activations, pooling, GAP, flatten and dropout are per element or per
channel anyway. The input is (B, N*C, H, W): copy i's own batch sits on channel group i. `logits` is
(B, N, classes). With the loss a sum of per-copy means and an element-wise optimiser (SGD, Adam, Adadelta),
each copy trains exactly as it would alone, up to float rounding (grouped kernels sum in another order).
Dropout draws one mask over the whole tensor: each copy gets its own, independent mask, but not the mask
the same seed draws when trained alone.

Every parameter, buffer and optimiser-state tensor of the batched model is the copies' tensors
concatenated along dim 0, so `unpack_state(..., i)` gives copy i's ordinary state_dict back.

The second mode, "streams" (`StreamsEpochRunner`), keeps N ordinary models — any module with `.logits`,
a SpecNet or a person's own class — each with its own `TrainStep`, optimiser, generator (data order,
augmentation) and global RNG state (dropout). On CUDA the N steps are captured into ONE CUDA graph as N
parallel branches (fork/join over side streams), so one replay runs all N steps concurrently: a tiny network's
step is a chain of small, latency-bound kernels, and N chains side by side fill the GPU that one leaves idle.
Elsewhere (CPU, `cuda_graphs=off`, or when capture fails) the copies step one after another, each under its
own RNG state, so a copy's run equals its sequential run.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from convladder.spec import kinds
from convladder.spec.build import ClassProbs, SpecNet, run_without_output_layer
from convladder.train.config import TrainConfig, crop_at
from convladder.train.epochs import EpochRunner, drive_steps, epoch_lrs, epoch_rows, finish_rows
from convladder.train.progress import Progress
from convladder.train.step import WARMUP_STEPS, StepRunner, TrainStep, step_mode

def _stateless() -> tuple[type, ...]:
    """Modules one instance of which serves every copy: the registry's batchable kinds (spec/kinds.py), and the
    output softmax."""
    return (*kinds.batchable_types(), ClassProbs)


class GroupedLinear(nn.Module):
    """N independent Linear(in, out) layers on (B, N*in) -> (B, N*out); weight (N*out, in), bias (N*out)."""

    def __init__(self, copies: int, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.copies, self.in_features, self.out_features = copies, in_features, out_features
        self.weight = nn.Parameter(torch.empty(copies * out_features, in_features))
        self.bias = nn.Parameter(torch.empty(copies * out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, b = self.copies, x.shape[0]
        w = self.weight.view(n, self.out_features, self.in_features)
        y = torch.einsum("bni,noi->bno", x.reshape(b, n, self.in_features), w).reshape(b, n * self.out_features)
        return y + self.bias if self.bias is not None else y


class BatchedNet(nn.Sequential):
    """N copies of a SpecNet as one module (same block names, so state_dict keys match the copies')."""

    def __init__(self, blocks: dict[str, nn.Sequential], copies: int):
        super().__init__(OrderedDict(blocks))
        self.copies = copies

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N*C, H, W) -> (B, N, classes), the trailing softmax skipped as in `SpecNet.logits`."""
        x = run_without_output_layer(self, x)
        return x.reshape(x.shape[0], self.copies, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)


def why_not_batchable(model: nn.Module) -> str | None:
    """None if `model` can be widened, else the reason (a SpecNet of convs, BN, pools, activations, fc, dropout)."""
    if not isinstance(model, SpecNet):
        return f"the network is a {type(model).__name__}, not a network built from a spec"
    for module in model.modules():
        if isinstance(module, (SpecNet, nn.Sequential)):
            continue
        kind = kinds.kind_of_class(type(module))
        if kind is not None and kind.unbatchable:  # e.g. prelu shares its slope across channels
            return kind.unbatchable
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros":
                return f"conv padding_mode {module.padding_mode}"
            continue
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.Linear, *_stateless())):
            continue
        return f"layer {type(module).__name__} has no batched form"
    return None


def _cat(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if tensors[0] is None else torch.cat([t.detach() for t in tensors], 0)


@torch.no_grad()
def _widen_module(ms: list[nn.Module]) -> nn.Module:
    first, n = ms[0], len(ms)
    if isinstance(first, nn.Conv2d):
        out = nn.Conv2d(n * first.in_channels, n * first.out_channels, first.kernel_size, stride=first.stride,
                        padding=first.padding, dilation=first.dilation, groups=n * first.groups,
                        bias=first.bias is not None, device=first.weight.device, dtype=first.weight.dtype)
    elif isinstance(first, (nn.BatchNorm1d, nn.BatchNorm2d)):
        out = type(first)(n * first.num_features, eps=first.eps, momentum=first.momentum, affine=first.affine,
                          track_running_stats=first.track_running_stats, device=first.running_mean.device)
    elif isinstance(first, nn.Linear):
        out = GroupedLinear(n, first.in_features, first.out_features, first.bias is not None).to(first.weight.device)
    else:
        return copy.deepcopy(first)  # stateless: one module serves every copy
    for name, tensor in first.state_dict().items():
        target = out.get_parameter(name) if name in dict(out.named_parameters()) else out.get_buffer(name)
        if tensor.dim() == 0:  # num_batches_tracked
            target.copy_(tensor)
        else:
            target.copy_(_cat([m.state_dict()[name] for m in ms]))
    for name, param in out.named_parameters():  # frozen stays frozen (train/init.start_levers)
        param.requires_grad_(first.get_parameter(name).requires_grad)
    return out


def widen(models: list[nn.Module]) -> BatchedNet:
    """Pack N networks built from the same spec into one BatchedNet (their weights copied in, in order)."""
    reason = why_not_batchable(models[0])
    if reason:
        raise ValueError(f"cannot batch: {reason}")
    blocks: dict[str, nn.Sequential] = {}
    for name, block in models[0].named_children():
        parts = [dict(m.named_children())[name] for m in models]
        blocks[name] = nn.Sequential(*[_widen_module([p[j] for p in parts]) for j in range(len(block))])
    net = BatchedNet(blocks, len(models))
    return net.train(models[0].training)


def unpack_state(state: dict[str, torch.Tensor], index: int, copies: int) -> dict[str, torch.Tensor]:
    """Copy `index`'s ordinary state_dict (the single network's keys and shapes) from a BatchedNet's."""
    return {k: (v.detach().clone() if v.dim() == 0 else v.detach().chunk(copies)[index].clone()) for k, v in state.items()}


def unpack_optimizer_state(state: dict, index: int, copies: int) -> dict:
    """Copy `index`'s optimiser state_dict from the batched optimiser's (per-parameter tensors split on dim 0)."""
    def part(v):
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return v.detach().chunk(copies)[index].clone()
        return v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)

    return {"state": {k: {name: part(v) for name, v in s.items()} for k, s in state["state"].items()},
            "param_groups": copy.deepcopy(state["param_groups"])}


# -- streams: N ordinary models, their steps captured as parallel branches of one CUDA graph ------------------

class CopyRng:
    """Each copy's own global RNG state (the CPU generator, and the default CUDA generator on CUDA).

    A sequential run seeds the global generators with its seed and its dropout draws from them; `own(i)` puts
    copy i's state in place around an eager step and keeps what the step left, so each copy draws the stream
    it would draw alone. (Inside the one captured graph every copy draws from the default CUDA generator,
    which gives each random op its own Philox offset at capture: independent masks, not the solo run's.)
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.states: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def _now(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _put(self, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.device)

    def record(self) -> None:
        """Append the current global state as the next copy's (called right after that copy's model is built)."""
        self.states.append(self._now())

    @contextlib.contextmanager
    def own(self, i: int) -> Iterator[None]:
        outer = self._now()
        self._put(self.states[i])
        try:
            yield
        finally:
            self.states[i] = self._now()
            self._put(outer)

    def saved(self, i: int) -> dict[str, torch.Tensor]:
        cpu, cuda = self.states[i]
        return {"cpu": cpu, **({"cuda": cuda} if cuda is not None else {})}


class StreamsRunner:
    """Calls N `TrainStep`s: on CUDA ('graph') as one captured graph with one parallel branch per copy.

    The first WARMUP_STEPS calls run every copy eagerly on its own side stream (real training steps), then
    all N steps are captured once — for each copy: its side stream waits for the capture stream, its step
    runs there, and the capture stream waits for it — and every later call replays the graph. If that capture
    raises: a one-line notice, then each copy captures and replays its own graph, one after another
    (`StepRunner`, which itself goes on eagerly if its capture fails). 'eager': the copies step one after
    another, each under its own RNG state (`CopyRng`); so do steps on crops (config.crop) in 'graph' mode.
    """

    def __init__(self, steps: list[TrainStep], mode: str, rng: CopyRng,
                 notice: Callable[[str], None] | None = None):
        self.steps, self.mode, self.rng = steps, mode, rng
        self.notice = notice or (lambda text: print(text, file=sys.stderr, flush=True))
        self.graph: torch.cuda.CUDAGraph | None = None
        self.singles: list[StepRunner] | None = None  # after a failed capture: one runner per copy
        self.calls = 0
        self._eager_calls = 0
        self.warmup_s = 0.0
        self._t0: float | None = None
        self._side: list[torch.cuda.Stream] = []
        self._capture_stream: torch.cuda.Stream | None = None

    def __call__(self) -> None:
        if self.mode != "graph" or self.steps[0].crop:  # crop epochs run eagerly, as in StepRunner
            self._eager()
            return
        self.calls += 1
        if self.graph is not None:
            self.graph.replay()
            return
        if self.singles is not None:
            for runner in self.singles:
                runner()
            return
        if self._t0 is None:
            self._t0 = time.perf_counter()
            self._side = [torch.cuda.Stream() for _ in self.steps]
            self._capture_stream = torch.cuda.Stream()
        if self.calls <= WARMUP_STEPS:
            self._branches(own_rng=True)  # each copy warms up on the side stream it is captured on
            return
        entry_stream = torch.cuda.current_stream()
        try:
            self._capture()
        except Exception as exc:  # noqa: BLE001 - any capture failure: per-copy graphs, one after another
            self.graph = None
            torch.cuda.set_stream(entry_stream)  # a raising capture_end can skip torch's own stream restore
            torch.cuda.synchronize()
            self.notice(f"CUDA graph capture of {len(self.steps)} copies on parallel streams failed "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); each copy replays its own "
                        "graph, one after another")
            self.singles = [StepRunner(step, "graph", self.notice, stream=side, warmed=True)
                            for step, side in zip(self.steps, self._side)]
            for runner in self.singles:
                runner()
        else:
            self.graph.replay()
        torch.cuda.synchronize()
        self.warmup_s = time.perf_counter() - self._t0

    def _eager(self) -> None:
        """Each copy's step, one after another, under its own RNG state; the first call is timed."""
        self._eager_calls += 1
        t0 = time.perf_counter()
        for i, step in enumerate(self.steps):
            with self.rng.own(i):
                step()
        if self._eager_calls == 1:
            self._sync()
            self.warmup_s = time.perf_counter() - t0

    def _sync(self) -> None:
        if self.steps[0].device.type == "cuda":
            torch.cuda.synchronize()

    def _branches(self, own_rng: bool = False) -> None:
        """Fork: copy i's step on side stream i after what the current stream did; join: the current stream waits."""
        here = torch.cuda.current_stream()
        for i, (step, side) in enumerate(zip(self.steps, self._side)):
            side.wait_stream(here)
            with torch.cuda.stream(side):
                if own_rng:
                    with self.rng.own(i):
                        step()
                else:
                    step()
        for side in self._side:
            here.wait_stream(side)

    def _capture(self) -> None:
        torch.cuda.synchronize()
        for step in self.steps:  # grads set to None: backward then allocates them from the graph's own pool
            step.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self._capture_stream):
            self._branches()  # recorded, not run: the replay after capture does this step
        self.graph = graph

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def rng_state(self, i: int) -> dict[str, torch.Tensor]:
        """Copy i's global RNG state to save for resume: its own while it steps eagerly, else the shared one."""
        if self.graph is None and self.singles is None:
            return self.rng.saved(i)
        state = {"cpu": torch.get_rng_state()}
        if self.steps[0].device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.steps[0].device)
        return state


class StreamsEpochRunner:
    """N ordinary models (one per seed) trained epoch by epoch together; `EpochRunner`'s interface."""

    def __init__(self, models: list[nn.Module], data, configs: list[TrainConfig], device: torch.device,
                 rng: CopyRng, notice: Callable[[str], None] | None = None, teacher=None):
        # teacher (config teacher): one frozen network that every seed's step asks
        self.runners = [EpochRunner(m, data, c, device, [c.seed], notice, teacher) for m, c in zip(models, configs)]
        self.config, self.data, self.device = configs[0], data, device
        self.copies = len(models)
        self.steps = self.runners[0].steps
        self.runner = StreamsRunner([r.step for r in self.runners], step_mode(configs[0], device), rng, notice)

    @property
    def warmup_s(self) -> float:
        return self.runner.warmup_s

    def train_epoch(self, epoch: int, progress: Progress) -> tuple[list[dict[str, Any]], list[bool], float]:
        progress.epoch_start(epoch, self.config.epochs, self.steps)
        te = time.perf_counter()
        for r in self.runners:
            r.model.train()
            r.step.new_epoch(crop_at(r.config, epoch))
        first = self.runners[0].step
        drive_steps(self.runner, self.steps, first, self.config.batch_size, progress)
        reads = [r.step.read_epoch() for r in self.runners]  # each copy's one read of the epoch
        for r in self.runners:
            r.recalibrate_bn(epoch)
        return epoch_rows(epoch, epoch_lrs(first, epoch, self.steps), [x[0][0] for x in reads],
                          [x[1][0] for x in reads], reads[0][2], te)

    def evaluate_into(self, rows: list[dict[str, Any]], epoch: int, te: float) -> None:
        for r, row in zip(self.runners, rows):
            r.add_evaluations([row], epoch)
        finish_rows(rows, te)  # every copy's epoch took the same wall time: they trained together

    def clean_train(self) -> list[tuple[float, int]] | None:
        cleans = [r.clean_train() for r in self.runners]
        return None if cleans[0] is None else [c[0] for c in cleans]

    def shifted_test(self) -> list[dict[str, float]] | None:
        shifted = [r.shifted_test() for r in self.runners]
        return None if shifted[0] is None else [s[0] for s in shifted]

    def weights(self, i: int) -> dict[str, torch.Tensor]:
        return self.runners[i].weights(0)

    def resume_state(self, i: int, weights: dict[str, torch.Tensor], epoch: int) -> dict[str, Any]:
        state = self.runners[i].resume_state(0, weights, epoch)
        state["rng"].update(self.runner.rng_state(i))
        return state
