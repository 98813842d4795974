"""Knowledge distillation (config `teacher`, `distill_temperature`, `distill_weight`): a stored run teaches.

A distilled step's loss, per copy: (1 - w) * CE(student, labels) + w * T^2 * KL(softmax(t / T) || softmax(s / T)),
Hinton's form (T^2 keeps the soft gradients' size the same whatever T); label smoothing, if set, is inside CE.
A network whose `logits` are log-probabilities (a logsoftmax layer) gives the same soft loss as its raw logits:
log_softmax(z) = z - logsumexp(z), a constant c per row, (z - c) / T = z / T - c / T, and softmax is unchanged by a
constant added to a row (tests/test_distill.py pins it, for student and teacher).

- `resolve(config, store)`: `teacher` (an id, a unique prefix, `latest:<...>`, looked up in the student's run store)
  becomes the full run id, so the job key and config.json hold the run itself; `teacher_runs` records the store it
  was found in (a Ray worker trains into a private store and reads the teacher there). Refused in one line, before
  any folder exists: not found, not completed, no weights, another data set, another validation split.
- `load(config, data, device)`: the teacher's network through the one `create_model` (safetensors weights, no
  pickle), in eval mode, frozen, on the training device; checked on the student's input shape and classes.
- `Teacher.logits(x)`: the teacher's logits of exactly the student's augmented, normalised batch, under no_grad,
  inside the training step (`TrainStep.backward`), with no read to the host (a CUDA graph captures it too).

This module imports torch inside functions only: `runs list`/`runs show` use `distilled_text` without torch.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from convladder.errors import UserError
from convladder.train.config import TrainConfig, val_images

SPLIT_KEYS = ("val_size", "split_seed", "subset")  # what decides which images the validation split holds


def distilled_text(d: dict[str, Any], params: bool = True) -> str:
    """'distilled from <run> (<model>, T 4, weight 0.5)', + the teacher's parameters (not counted in the student's)."""
    model = str(d.get("model") or "?")
    model = model if len(model) <= 40 else "custom spec"
    text = f"distilled from {d.get('run')} ({model}, T {d.get('temperature'):g}, weight {d.get('weight'):g})"
    if params and isinstance(d.get("params"), int):
        text += f"; teacher {d['params']:,} params, not counted in the student's"
    return text


def config_record(config: dict[str, Any]) -> dict[str, Any] | None:
    """What a stored config says of its teacher (no model, no params: those come from result.json), or None."""
    if not config.get("teacher"):
        return None
    return {"run": config["teacher"], "model": None, "params": None,
            "temperature": config.get("distill_temperature", 4.0), "weight": config.get("distill_weight", 0.5)}


# -- set-up: which run, and whether it may teach this student ---------------------------------------------------

def resolve(config: TrainConfig, store: Any = None) -> TrainConfig:
    """`config` with `teacher` as the full run id and `teacher_runs` as its store; UserError where it cannot teach."""
    if not config.teacher:
        return config
    record, root = _find(config, store)
    _check(config, record, root)
    return config.replace(teacher=record.id, teacher_runs=str(root))


def resolve_dict(config: dict[str, Any], runs_root: str | Path | None, *, tolerant: bool = False) -> dict[str, Any]:
    """`resolve` for a job's config dict (sweeps, ladders: before the job key is made). `tolerant` (a report
    recomputing keys): a teacher that cannot be resolved now leaves the dict as it is instead of raising."""
    if not config.get("teacher"):
        return config
    from convladder.runs.store import RunStore

    try:
        resolved = resolve(TrainConfig.from_dict(config), RunStore(runs_root))
    except UserError:
        if tolerant:
            return config
        raise
    return {**config, "teacher": resolved.teacher, "teacher_runs": resolved.teacher_runs}


def _find(config: TrainConfig, store: Any) -> tuple[Any, Path]:
    """(the teacher's index record, its store's root): the student's store first, then the one recorded."""
    from convladder.runs.store import RUN_ID, RunStore

    own = store if store is not None else RunStore(config.teacher_runs)
    ref = str(config.teacher).strip()
    try:
        return own.get(ref), Path(own.root).resolve()
    except UserError as exc:
        missing = exc
    other = config.teacher_runs
    if other and RUN_ID.match(ref) and Path(other).resolve() != Path(own.root).resolve():
        if (Path(other) / ref / "config.json").is_file():
            found = RunStore(other)
            return found.get(ref), Path(found.root).resolve()
        raise UserError(f"teacher run {ref} is in neither the run store {own.root} nor {other}, the store it was found "
                        f"in, which is not readable on {socket.gethostname()} — a Ray worker needs the teacher's run "
                        "folder at that path (a shared file system), or train with --executor inprocess")
    raise UserError(f"teacher: {missing} — train the teacher first, or name a completed run of the student's store")


def _check(config: TrainConfig, record: Any, root: Path) -> None:
    """Refuse a teacher that is unfinished, has no weights, or knows another data set or validation split."""
    from convladder.runs.reader import read_config

    where = f"teacher run {record.id}"
    if record.status != "completed":
        raise UserError(f"{where} is {record.status}, not completed — finish it (convladder train --resume "
                        f"{record.id}) or name a completed run")
    folder = root / record.id
    if not (folder / "model.safetensors").is_file():
        raise UserError(f"{where} saved no weights ({folder / 'model.safetensors'} is missing) — name a run that "
                        "saved its weights")
    theirs = read_config(folder)
    if str(theirs.get("dataset", "mnist")).lower() != str(config.dataset).lower():
        raise UserError(f"{where} trained on {theirs.get('dataset')!r}, the student trains on {config.dataset!r} — "
                        f"name a teacher trained on {config.dataset}")
    mine = {"val_size": val_images(config), "split_seed": config.split_seed, "subset": config.subset}
    if mine["val_size"]:  # with no split of its own the student has no validation images to leak
        differ = [k for k in SPLIT_KEYS if theirs.get(k, getattr(TrainConfig(), k)) != mine[k]]
        if differ:
            was = ", ".join(f"{k} {theirs.get(k)} vs the student's {mine[k]}" for k in differ)
            raise UserError(f"{where} held out another validation split ({was}): it may have trained on the images "
                            "the student validates on, so the student's validation accuracy would not be held out — "
                            "train the teacher with " + " ".join(f"{k}={mine[k]}" for k in differ)
                            + " or give the student the teacher's")


# -- the network -------------------------------------------------------------------------------------------------

class Teacher:
    """A stored run's network, frozen, and the distilled loss; `record` is what result.json's distilled_from holds."""

    def __init__(self, module: Any, record: dict[str, Any]):
        self.module, self.record = module, record
        self.temperature, self.weight = float(record["temperature"]), float(record["weight"])
        self.channels_last = False

    def use_channels_last(self) -> None:
        """The student trains channels_last (CUDA): the teacher's weights and inputs take the same layout."""
        import torch

        self.module.to(memory_format=torch.channels_last)
        self.channels_last = True

    def logits(self, x: Any) -> Any:
        """(N, classes) float32 logits of the normalised batch x (N, C, H, W); no gradient, no host read."""
        import torch

        with torch.no_grad():
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.module.logits(x).float()

    def loss(self, hard: Any, student: Any, taught: Any) -> Any:
        """Per copy: (1 - w) * hard + w * T^2 KL. hard: (copies,) mean CE; student: (B, classes) or (B, copies,
        classes); taught: (copies * B, classes), copy-major, as the teacher saw the batch."""
        copies, classes = hard.shape[0], student.shape[-1]
        s = student.reshape(student.shape[0], copies, classes)
        t = taught.view(copies, -1, classes).transpose(0, 1)  # (B, copies, classes), as s
        soft = soft_loss(s, t, self.temperature).mean(0)
        return (1 - self.weight) * hard + self.weight * soft


def soft_loss(student: Any, teacher: Any, temperature: float) -> Any:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)) over the last dimension (one value per row)."""
    import torch.nn.functional as F

    log_s = F.log_softmax(student / temperature, dim=-1)
    log_t = F.log_softmax(teacher / temperature, dim=-1)
    return temperature * temperature * (log_t.exp() * (log_t - log_s)).sum(-1)


def load(config: TrainConfig, data: Any, device: Any) -> Teacher | None:
    """The resolved teacher (`resolve` ran) on `device`, checked against the student's data; None without one."""
    if not config.teacher:
        return None
    import torch

    from convladder.runs.reader import read_json
    from convladder.train.models import create_model

    folder = Path(config.teacher_runs or ".") / config.teacher
    where = f"teacher run {config.teacher}"
    shape = tuple(read_json(folder / "env.json", []).get("input_shape") or ())
    if shape and shape != tuple(data.image_shape):
        raise UserError(f"{where} trained on {'x'.join(map(str, shape))} inputs, the student's are "
                        f"{'x'.join(map(str, data.image_shape))} — name a teacher trained on the student's images")
    try:
        with torch.random.fork_rng(devices=[]):  # rebuilding draws initial weights: the student's stream stays put
            module = create_model(folder)  # final weights (model.safetensors), eval mode
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    module.requires_grad_(False)
    _check_outputs(module, where, data, config.crop)
    params = sum(p.numel() for p in module.parameters())
    theirs = read_json(folder / "config.json", [])
    record = {"run": config.teacher, "model": theirs.get("model"), "params": params,
              "temperature": config.distill_temperature, "weight": config.distill_weight}
    return Teacher(module.to(device), record)


def _check_outputs(module: Any, where: str, data: Any, crop: int) -> None:
    """Refuse a teacher that gives another number of classes, or cannot run on the student's crops (config crop)."""
    import torch

    sizes = [tuple(data.image_shape)] + ([(data.image_shape[0], crop, crop)] if crop else [])
    for size in sizes:
        try:
            with torch.no_grad():
                out = module.logits(torch.zeros(2, *size))
        except Exception as exc:  # noqa: BLE001 - any failure at this size: it cannot teach on these images
            raise UserError(f"{where} does not run on the student's {size[1]}x{size[2]} images ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:120]}) — name a teacher that does, or drop crop") from None
        if tuple(out.shape) != (2, data.classes):
            raise UserError(f"{where} gives {tuple(out.shape[1:])} scores per image, the student's data set has "
                            f"{data.classes} classes — name a teacher trained on the same classes")
