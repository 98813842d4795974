"""The tolerant reader of run folders: every file of a run read with its own error handling.

Two modes: strict (a command needs the file: anything missing, unreadable or of the wrong type is one
`UserError` naming the file and what to do) and noting (`notes` given: the problem becomes a line in
`notes` and an empty value comes back — the report describes whatever is on disk).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convladder.errors import UserError

if TYPE_CHECKING:  # annotations only: reading a run's JSON files never loads torch
    import torch

RUN_FILES = ("config.json", "env.json", "metrics.jsonl", "result.json", "model.safetensors")
OWN_JSON, SOURCE_FILE = "own_model.json", "model_source.py"  # an own-model run's record and source copy
SOURCE_ENV = "CONVLADDER_OWN_SOURCE"  # 'recorded': rebuild an own model from the run's copy of its source

# Types of the config.json keys that commands read (a key may be absent: older runs have fewer).
_NUM = (int, float)
CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,), "model_spec": (str, type(None)), "dataset": (str,), "name": (str, type(None)),
    "seed": (int,), "seeds": (int,), "epochs": (int,), "batch_size": (int,), "optimizer": (str,),
    "lr": (*_NUM, type(None)), "schedule": (str,), "augment": (bool,), "target": _NUM,
    "tags": (list, type(None)), "val_size": (int,), "data_mean": _NUM, "data_std": _NUM,
}
_TYPE_WORDS = {str: "text", int: "an integer", float: "a number", bool: "true/false", list: "a list",
               dict: "an object", type(None): "null"}


def _kind(value: Any) -> str:
    return "a JSON " + {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def read_json(path: Path, notes: list[str] | None = None) -> dict[str, Any]:
    """A run file holding one JSON object. Strict without `notes`; with `notes`, problems become notes."""
    path = Path(path)
    try:
        if not path.is_file():
            raise UserError(f"{path} does not exist (run not finished, or the folder was changed)")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested past the stack
            raise UserError(f"{path} cannot be read (half-written or damaged: {type(exc).__name__}: {exc}) — "
                            "restore it, or remove the run's folder and run `convladder runs reindex`") from None
        if not isinstance(data, dict):
            raise UserError(f"{path} holds {_kind(data)}, not the JSON object convladder writes — the file was "
                            "changed by hand or damaged; restore it, or remove the run's folder and run "
                            "`convladder runs reindex`")
        return data
    except UserError as err:
        if notes is None:
            raise
        notes.append(_short(path, err))
        return {}


def read_result(folder: Path, notes: list[str]) -> dict[str, Any]:
    """result.json of a run folder in noting mode: {} when missing or damaged; otherwise `final` and `best` are
    always mappings and their accuracies (`*_acc`) numbers or absent — each problem one line in `notes`."""
    result = read_json(Path(folder) / "result.json", notes)
    if result and not isinstance(result.get("status"), str):
        notes.append(f"result.json: status is {json.dumps(result.get('status'))[:40]}, not text (the index's is used)")
        result.pop("status", None)
    for part in ("final", "best") if result else ():
        value = result.get(part)
        if not isinstance(value, dict):
            if value is not None:
                notes.append(f"result.json: `{part}` holds {_kind(value)}, not a mapping")
            result[part] = {}
            continue
        bad = [k for k, v in value.items() if str(k).endswith("_acc") and v is not None
               and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100)]
        if bad:
            notes.append(f"result.json: {part}.{bad[0]} is {json.dumps(value[bad[0]])[:40]}, not a percentage")
            result[part] = {k: v for k, v in value.items() if k not in bad}
    return result


def _short(path: Path, err: UserError) -> str:
    text = str(err)
    if "does not exist" in text:
        return f"{path.name} is missing"
    if "holds" in text:
        return f"{path.name} does not hold a JSON object"
    return f"{path.name} cannot be read (half-written or damaged)"


def check_config(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """config.json with the types commands rely on; one UserError naming the first wrong key."""
    for key, types in CONFIG_TYPES.items():
        if key not in config:
            continue
        value = config[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if key == "tags" and isinstance(value, list):
            ok = all(isinstance(t, str) for t in value)
        if not ok:
            want = " or ".join(_TYPE_WORDS.get(t, t.__name__) for t in types)
            raise UserError(f"{path}: {key!r} is {json.dumps(value)[:60]} ({type(value).__name__}) but should be "
                            f"{want} — the file was changed by hand or damaged; fix that key")
    return config


def read_config(folder: Path) -> dict[str, Any]:
    """config.json of a run folder, type-checked (strict)."""
    path = Path(folder) / "config.json"
    return check_config(read_json(path), path)


def read_metrics(path: Path, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """metrics.jsonl rows (objects with an 'epoch'); half-written or damaged lines are skipped (noted)."""
    path = Path(path)
    if not path.is_file():
        if notes is not None:
            notes.append("metrics.jsonl is missing (no epoch finished): no training curves")
        return []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        if notes is not None:
            notes.append("metrics.jsonl cannot be read")
        return []
    rows, bad = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1  # a half-written last line from a crash, or damage
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            rows.append(row)
        else:
            bad += 1
    if bad and notes is not None:
        notes.append(f"metrics.jsonl: {bad} unreadable line(s) skipped")
    return rows


def weights_path(folder: Path, which: str = "final") -> Path:
    if which not in ("final", "best"):
        raise UserError(f"which must be 'final' or 'best', not {which!r}")
    return Path(folder) / ("model.safetensors" if which == "final" else "best.safetensors")


def read_weights(folder: Path, which: str = "final") -> dict[str, torch.Tensor]:
    """A run's safetensors weights (final or best); UserError when missing or damaged."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    path = weights_path(folder, which)
    if not path.is_file():
        raise UserError(f"{path} does not exist: the run saved no {which} weights")
    try:
        return st_load(path.read_bytes())
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"checkpoint {path} cannot be read ({exc}); it is damaged or not a safetensors file") from None


def source_status(folder: Path) -> str | None:
    """One line when the file an own-model run trained from has changed or gone since; None otherwise."""
    from convladder.spec.ownref import sha256_text

    folder = Path(folder)
    if not (folder / OWN_JSON).is_file():
        return None
    own = read_json(folder / OWN_JSON)
    file, sha, cls = own.get("file"), own.get("sha256"), own.get("cls")
    if own.get("rebuild") != "file" or not isinstance(file, str) or not isinstance(sha, str) or not file:
        return None
    path = Path(file)
    if not path.is_file():
        return (f"{path}, the file run {folder.name} trained {cls} from, is gone; the run recorded its "
                f"text in {SOURCE_FILE} ({SOURCE_ENV}=recorded rebuilds from that copy)")
    try:
        now = sha256_text(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return f"{path} cannot be read now"
    if now != sha:
        return (f"{path} changed since run {folder.name} trained {cls} from it (sha256 {sha[:12]} "
                f"then, {now[:12]} now); {SOURCE_ENV}=recorded rebuilds from the run's copy ({SOURCE_FILE})")
    return None


def created_of(run_id: str) -> str:
    """The index's `created` (local time, seconds) from a run id YYYYmmdd-HHMMSS-<hex>."""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.strptime(run_id[:15], "%Y%m%d-%H%M%S"))
    except ValueError:
        return "1970-01-01T00:00:00"


def row_from_folder(folder: Path, running: bool) -> dict[str, Any]:
    """The index row a run folder implies (for `runs reindex`): config, result, and whether it is running."""
    folder = Path(folder)
    notes: list[str] = []
    config = read_json(folder / "config.json", notes)
    try:
        check_config(config, folder / "config.json")
    except UserError:
        config = {}  # a damaged config still gets a row (id and path), so the run can be seen and removed
    result = read_json(folder / "result.json", notes) if (folder / "result.json").is_file() else {}
    final = result.get("final") if isinstance(result.get("final"), dict) else {}
    best = result.get("best") if isinstance(result.get("best"), dict) else {}
    status = result.get("status") if isinstance(result.get("status"), str) else None
    status = status or ("running" if running else "interrupted")

    def num(value: Any, kind: type) -> Any:
        return kind(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    return {"id": folder.name, "created": created_of(folder.name), "status": status, "name": config.get("name"),
            "model": config.get("model"), "dataset": config.get("dataset"), "seed": config.get("seed"),
            "params": num(result.get("params"), int), "epochs": config.get("epochs"),
            "final_test_acc": num(final.get("test_acc"), float), "best_val_acc": num(best.get("val_acc"), float),
            "best_epoch": num(best.get("epoch"), int), "path": str(folder.resolve()),
            "tags": json.dumps(config.get("tags") or [])}


def check_output(out: str | Path, default_name: str, store_root: str | Path | None) -> Path:
    """The file an `-o` option will write, checked before any work: an existing folder takes `default_name`
    inside it; a target inside a folder of the run store or onto its index is refused (it would replace a
    run's weights or the index); the folder is created and a temp file written there, so a read-only or
    missing place is one UserError now, not after the export or report is done."""
    import os
    import stat
    import tempfile

    target = Path(out).expanduser()
    if target.is_dir():
        target = target / default_name
    resolved = target.resolve()  # symlinks followed: a link into a run folder is caught too
    if store_root is not None:
        store = Path(store_root).expanduser().resolve()
        try:
            inside = resolved.relative_to(store).parts
        except ValueError:
            inside = ()
        if inside and (inside[0].startswith("index.sqlite") or len(inside) > 1 and (store / inside[0]).is_dir()):
            what = ("is the run store's index" if inside[0].startswith("index.sqlite")
                    else f"is inside {store / inside[0]}, a folder of the run store")
            raise UserError(f"-o {target} {what}: writing there could replace a run's files or the index — "
                            f"write the output outside the run store (e.g. -o {default_name})")
    try:
        mode = os.stat(resolved).st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        raise UserError(f"-o {target} exists and is not a regular file (a folder, FIFO or device) — give a file name")
    try:
        resolved.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=resolved.parent, prefix=f".{resolved.name}.", suffix=".part")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"-o {target}: cannot write in {resolved.parent} ({exc.strerror or exc}) — give a folder you "
                        "may write") from None
    return target


def weights_mismatch(expected: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> str | None:
    """What stops `saved` from loading into a network whose state_dict is `expected`, naming the tensor; None
    when it fits. torch's load_state_dict casts silently (int8 weights become float 0/1/-1 ... and every
    prediction one class) and names no tensor for a missing key, so this is checked first."""
    missing = [k for k in expected if k not in saved]
    extra = [k for k in saved if k not in expected]
    if missing or extra:
        parts = ([f"missing {', '.join(missing[:3])}" + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")]
                 if missing else []) + ([f"unexpected {', '.join(extra[:3])}"
                                          + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")] if extra else [])
        return "; ".join(parts)
    for key, want in expected.items():
        got = saved[key]
        if tuple(got.shape) != tuple(want.shape):
            return f"tensor {key} has shape {tuple(got.shape)}, the network's is {tuple(want.shape)}"
        if got.dtype != want.dtype and not (got.dtype.is_floating_point and want.dtype.is_floating_point):
            return f"tensor {key} is {str(got.dtype)[6:]}, the network's is {str(want.dtype)[6:]}"
    return None
