"""Run store: round trip, bad checkpoints, resume equivalence (Ctrl-C and SIGKILL), concurrent processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from convladder.errors import UserError
from convladder.train.config import TrainConfig
from convladder.train.loop import PAUSE_ENV, resume, train
from convladder.train.progress import Progress
from convladder.train.store import RunStore

TINY = ("c1[conv3x3(8, bias=false) relu bn dropout(0.1)] t1[maxpool2x2 conv1x1(8, bias=false) relu bn] "
        "c2[conv3x3(16, bias=false) relu bn dropout(0.1)] out[gap conv1x1(10, bias=false) logsoftmax]")
CONFIG = dict(model=TINY, dataset="synthetic", epochs=3, batch_size=64, val_size=256, lr=0.1, seed=5, threads=1,
              clean_train_eval=256, erase=0.3)


def without_times(rows):
    timing = ("epoch_time_s", "train_time_s", "train_images_per_s")
    return [{k: v for k, v in r.items() if k not in timing} for r in rows]


def test_round_trip(tmp_path):
    store = RunStore(tmp_path)
    result = train(TrainConfig(**{**CONFIG, "epochs": 2, "tags": ["x"]}), store)
    rid = result.run_id
    assert store.get(rid[:17]).id == rid and store.get("latest").id == rid
    assert [r.id for r in store.list_runs(status="completed", tag="x")] == [rid]
    assert store.list_runs(status="failed") == []
    assert len(store.read_metrics(rid)) == 2
    assert store.read_result(rid)["final"]["test_acc"] == result.final["test_acc"]
    row = store.get(rid)
    assert row.params == result.params and row.final_test_acc == result.final["test_acc"]
    for which in ("final", "best"):
        model = store.load_model(rid, which)
        assert sum(p.numel() for p in model.parameters()) == result.params
    x = torch.randn(4, 1, 28, 28)
    assert store.load_model(rid).logits(x).shape == (4, 10)
    with pytest.raises(UserError, match="no run"):
        store.get("nope")


def test_unreadable_checkpoints_are_user_errors(tmp_path):
    store = RunStore(tmp_path)
    rid = train(TrainConfig(**{**CONFIG, "epochs": 1}), store).run_id
    (tmp_path / rid / "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read"):
        store.load_model(rid)
    (tmp_path / rid / "resume.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot be read"):
        store.handle(rid).load_resume()


class StopAfter(Progress):
    """Presses Ctrl-C at the start of epoch `n`."""

    def __init__(self, n: int):
        self.n = n

    def epoch_start(self, epoch, epochs, steps):
        if epoch == self.n:
            raise KeyboardInterrupt


def test_ctrl_c_then_resume_matches_an_uninterrupted_run(tmp_path):
    store = RunStore(tmp_path)
    full = train(TrainConfig(**CONFIG), store)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**CONFIG), store, StopAfter(2))
    stopped = store.list_runs(status="interrupted")
    assert len(stopped) == 1 and len(store.read_metrics(stopped[0].id)) == 1
    resumed = resume(stopped[0].id, store)
    assert without_times(store.read_metrics(resumed.run_id)) == without_times(store.read_metrics(full.run_id))
    assert resumed.final == full.final and resumed.status == "completed"
    a, b = (store.load_state_dict(r, "final") for r in (full.run_id, resumed.run_id))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="already completed"):
        resume(resumed.run_id, store)


SCRIPT = """
import sys
from convladder.train.config import TrainConfig
from convladder.train.loop import train
from convladder.train.store import RunStore
train(TrainConfig(**{config!r}), RunStore(sys.argv[1]))
"""


def _spawn(root: Path, env: dict[str, str] | None = None, config: dict | None = None) -> subprocess.Popen:
    code = SCRIPT.format(config=config or CONFIG)
    return subprocess.Popen([sys.executable, "-c", code, str(root)], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_sigkill_between_epochs_then_resume_matches(tmp_path):
    store = RunStore(tmp_path)
    marker = tmp_path / "paused"
    proc = _spawn(tmp_path, {PAUSE_ENV: "1", PAUSE_ENV + "_MARKER": str(marker)})
    full = train(TrainConfig(**CONFIG), RunStore(tmp_path / "full"))  # meanwhile, the uninterrupted run
    deadline = time.time() + 50
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "child never reached the end of epoch 1"
        time.sleep(0.1)
    (alive,) = store.list_runs()
    assert alive.status == "running"  # paused after epoch 1, its process is there
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (killed,) = store.list_runs()
    # the process had no chance to say so; the store sees its owner is gone and says what it is
    assert killed.status == "interrupted" and store.get(killed.id).status == "interrupted"
    assert not (store.root / killed.id / "running.json").exists()
    resumed = resume(killed.id, store)
    assert resumed.status == "completed"
    assert without_times(store.read_metrics(killed.id)) == without_times(RunStore(tmp_path / "full").read_metrics(full.run_id))


def test_two_processes_at_once_get_distinct_runs_and_an_intact_index(tmp_path):
    config = {**CONFIG, "epochs": 1}
    procs = [_spawn(tmp_path, config=config) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    runs = RunStore(tmp_path).list_runs()
    assert len(runs) == 2 and runs[0].id != runs[1].id
    assert all(r.status == "completed" for r in runs)
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2
    with sqlite3.connect(tmp_path / "index.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_many_concurrent_creates_never_collide(tmp_path):
    code = ("import sys\nfrom convladder.train.store import RunStore\ns = RunStore(sys.argv[1])\n"
            "for i in range(10): s.create_run({'model': 'm', 'seed': i})\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    runs = RunStore(tmp_path).list_runs()
    assert len(runs) == 20 and len({r.id for r in runs}) == 20
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 20
