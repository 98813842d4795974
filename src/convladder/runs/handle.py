"""One run's folder being written: config, metrics, weights, resume state, and its index row."""

from __future__ import annotations

import io
import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convladder.errors import UserError
from convladder.fileio import atomic_write_bytes
from convladder.runs import reader

if TYPE_CHECKING:
    import torch

    from convladder.runs.store import RunStore

OWNER_FILE = "running.json"  # host and pid of the process training the run; removed when it stops running


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


class RunHandle:
    """Writes one run's folder and keeps its index row up to date."""

    def __init__(self, store: RunStore, run_id: str):
        self.store, self.id = store, run_id
        self.path = store.root / run_id

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.path / name, obj)

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl with all epochs so far (small; keeps it consistent with resume.pt)."""
        atomic_write_bytes(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())

    def save_weights(self, which: str, state_dict: dict[str, torch.Tensor], epoch: int | None = None) -> None:
        """which: 'model' (final) or 'best'; `epoch` is recorded in the file's metadata."""
        from safetensors.torch import save as st_save  # torch loads only where weights are written or read

        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        meta = {"epoch": str(epoch)} if epoch is not None else None
        atomic_write_bytes(self.path / f"{which}.safetensors", st_save(tensors, metadata=meta))

    def save_resume(self, state: dict[str, Any]) -> None:
        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.path / "resume.pt", buf.getvalue())

    def load_resume(self) -> dict[str, Any]:
        """resume.pt (read with weights_only=True); UserError when missing or damaged."""
        path = self.path / "resume.pt"
        if not path.is_file():
            raise UserError(f"run {self.id} has no resume.pt (it never finished an epoch); start a new run")
        changed = reader.source_status(self.path)  # resuming runs the file as it is now: say if it is not what ran
        if changed:
            from convladder.spec.own import notice as own_notice

            own_notice(changed)
        import torch

        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means the file is unusable
            raise UserError(f"{path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); start a new run") from None
        if not isinstance(saved, dict) or not {"model", "optimizer", "rng", "state"} <= set(saved):
            raise UserError(f"{path} is not a convladder resume state (keys missing); start a new run")
        return saved

    def weights_epoch(self, which: str = "final") -> int | None:
        """The epoch recorded in the metadata of the run's weights file, if any."""
        from safetensors import safe_open

        try:
            with safe_open(str(reader.weights_path(self.path, which)), "pt") as fh:
                return int((fh.metadata() or {}).get("epoch"))
        except Exception:  # noqa: BLE001 - missing, damaged, or written before epochs were recorded
            return None

    def claim(self) -> None:
        """Record this process as the one training the run (OWNER_FILE), so a vanished owner can be noticed."""
        self.write_json(OWNER_FILE, {"host": socket.gethostname(), "pid": os.getpid()})

    def update(self, **fields: Any) -> None:
        """Change the index row; status 'running' records this process as the run's owner (see OWNER_FILE)."""
        if fields.get("status") == "running":
            self.claim()
        self.store._update(self.id, **fields)
        if "status" in fields and fields["status"] != "running":
            (self.path / OWNER_FILE).unlink(missing_ok=True)
