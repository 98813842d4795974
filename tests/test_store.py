"""Run store: round trip, bad checkpoints, resume equivalence (Ctrl-C and SIGKILL), concurrent processes;
issue 13: read-only, damaged or missing index, --runs a file, damaged files, stale temp files, `latest`."""

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
from convladder.runs.store import RunStore
from convladder.train.config import TrainConfig
from convladder.train.loop import PAUSE_ENV, resume, train
from convladder.train.models import create_model
from convladder.train.progress import Progress

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
        model = create_model(store.root / rid, which=which)
        assert sum(p.numel() for p in model.parameters()) == result.params
    x = torch.randn(4, 1, 28, 28)
    assert create_model(store.root / rid).logits(x).shape == (4, 10)
    with pytest.raises(UserError, match="no run"):
        store.get("nope")


def test_unreadable_checkpoints_are_user_errors(tmp_path):
    store = RunStore(tmp_path)
    rid = train(TrainConfig(**{**CONFIG, "epochs": 1}), store).run_id
    (tmp_path / rid / "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read"):
        create_model(store.root / rid)
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
from convladder.runs.store import RunStore
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
    code = ("import sys\nfrom convladder.runs.store import RunStore\ns = RunStore(sys.argv[1])\n"
            "for i in range(10): s.create_run({'model': 'm', 'seed': i})\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    runs = RunStore(tmp_path).list_runs()
    assert len(runs) == 20 and len({r.id for r in runs}) == 20
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 20


# -- issue 13: the store under bad conditions ---------------------------------------------------------------

def _cli(*args: str) -> tuple[int, str, str]:
    """Run the CLI in-process; (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from convladder.cli import build_app

    res = CliRunner().invoke(build_app(), list(args))
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        from convladder.errors import UserError as UE

        assert isinstance(res.exception, UE), repr(res.exception)  # never a traceback
        return 2, res.stdout, str(res.exception)
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture(scope="module")
def one_run(tmp_path_factory) -> Path:
    """A store with one trained run (1 epoch, synthetic data); tests copy it before changing anything."""
    root = tmp_path_factory.mktemp("one-run")
    train(TrainConfig(**{**CONFIG, "epochs": 1, "name": "first"}), RunStore(root))
    return root


@pytest.fixture
def store_copy(one_run, tmp_path) -> RunStore:
    import shutil

    shutil.copytree(one_run, tmp_path / "runs")
    return RunStore(tmp_path / "runs")


def _run_id(store: RunStore) -> str:
    (folder,) = store.run_folders()
    return folder.name


READ_ONLY_SCRIPT = """
import json, sys
from typer.testing import CliRunner
from convladder.cli import build_app
root, rid, npy, out = sys.argv[1:5]
done = {}
for name, args in {"list": ["runs", "list"], "show": ["runs", "show", "latest"],
                   "predict": ["predict", rid, npy, "--json"],
                   "export": ["export", rid, "--no-check", "-o", out]}.items():
    res = CliRunner().invoke(build_app(), [*args, "--runs", root])
    done[name] = [res.exit_code, res.stdout[-3000:], res.stderr[-3000:], repr(res.exception)]
print(json.dumps(done))
"""


def test_read_only_store_can_be_read(store_copy, tmp_path):
    """chmod -w on the folder and files: list, show, predict and export work (WAL cannot make its -shm)."""
    import json
    import shutil

    import numpy as np

    pytest.importorskip("onnx")
    rid = _run_id(store_copy)
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.uint8))
    before = sorted((p.name, p.stat().st_size) for p in store_copy.root.rglob("*"))
    paths = [store_copy.root, *store_copy.root.rglob("*")]
    for p in paths:
        p.chmod(0o555 if p.is_dir() else 0o444)
    cmd = [sys.executable, "-c", READ_ONLY_SCRIPT, str(store_copy.root), rid, str(tmp_path / "x.npy"),
           str(tmp_path / "x.onnx")]
    if os.geteuid() == 0:  # root ignores file modes: drop the capability that lets it
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a store read-only")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", *cmd]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    finally:
        for p in paths:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert proc.returncode == 0, proc.stderr
    done = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (code, out, err, exc) in done.items():
        assert code == 0, (name, out, err, exc)
    assert rid in done["list"][1] and rid in done["show"][1] and "completed" in done["list"][1]
    assert len(json.loads(done["predict"][1])["images"]) == 2
    assert (tmp_path / "x.onnx").stat().st_size > 0
    assert sorted((p.name, p.stat().st_size) for p in store_copy.root.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("damage", ["garbage", "zero-bytes", "deleted"])
def test_damaged_index_is_rebuilt_from_the_folders(store_copy, damage, capsys):
    rid = _run_id(store_copy)
    db = store_copy.db_path
    if damage == "garbage":
        db.write_bytes(os.urandom(4096))
    elif damage == "zero-bytes":
        db.write_bytes(b"")
    else:
        db.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    (record,) = RunStore(store_copy.root).list_runs()
    assert record.id == rid and record.status == "completed" and record.name == "first"
    assert record.final_test_acc == RunStore(store_copy.root).read_result(rid)["final"]["test_acc"]
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and ": rebuilt" in err and len(err.strip().splitlines()) == 1
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_new_run_with_a_damaged_index_leaves_no_orphan(store_copy):
    store_copy.db_path.write_bytes(b"not a database at all" * 100)
    handle = store_copy.create_run({"model": "m", "seed": 1})  # what train does once its data and model are ready
    ids = {r.id for r in store_copy.list_runs()}
    assert ids == {f.name for f in store_copy.run_folders()} and handle.id in ids and len(ids) == 2


def test_runs_reindex_command(store_copy):
    rid = _run_id(store_copy)
    with sqlite3.connect(store_copy.db_path) as conn:
        conn.execute("DELETE FROM runs")
    conn.close()
    code, out, _ = _cli("runs", "reindex", "--runs", str(store_copy.root))
    assert code == 0 and "indexed 1 run" in out
    assert [r.id for r in store_copy.list_runs()] == [rid]


def test_runs_pointing_at_a_file_is_one_clear_error(tmp_path, monkeypatch):
    target = tmp_path / "a-file"
    target.write_text("x")
    code, _, err = _cli("runs", "list", "--runs", str(target))
    assert code == 2 and "is a file, not a folder" in err

    def no_data(*_a, **_k):
        raise AssertionError("train loaded data before checking --runs")

    monkeypatch.setattr("convladder.train.runner.load_splits", no_data)
    code, _, err = _cli("train", "--model", TINY, "--dataset", "synthetic", "--epochs", "1", "--runs", str(target))
    assert code == 2 and "is a file, not a folder" in err and target.read_text() == "x"


def test_config_of_the_wrong_type_is_one_clear_message(store_copy, tmp_path):
    import numpy as np

    rid = _run_id(store_copy)
    (store_copy.root / rid / "config.json").write_text("[1, 2, 3]")
    np.save(tmp_path / "x.npy", np.zeros((1, 28, 28), np.uint8))
    runs = ["--runs", str(store_copy.root)]
    for args in (["runs", "show", rid], ["predict", rid, str(tmp_path / "x.npy")],
                 ["export", rid, "--no-check", "-o", str(tmp_path / "x.onnx")], ["serve", rid, "--port", "0"]):
        if args[0] == "export":
            pytest.importorskip("onnx")
        code, _, err = _cli(*args, *runs)
        assert code == 2 and "config.json holds a JSON list" in err, (args, err)
    (store_copy.root / rid / "config.json").write_text('{"model": "m", "seed": [1]}')
    code, _, err = _cli("runs", "show", rid, *runs)
    assert code == 2 and "'seed' is [1]" in err and "should be an integer" in err


def test_damaged_resume_falls_back_to_the_last_epoch(tmp_path, capsys):
    store = RunStore(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**CONFIG), store, StopAfter(2))
    (stopped,) = store.list_runs(status="interrupted")
    folder = store.root / stopped.id
    (folder / "resume.pt").write_bytes(b"\x80\x02damaged")
    capsys.readouterr()
    resumed = resume(stopped.id, store)
    assert resumed.status == "completed" and [r["epoch"] for r in store.read_metrics(stopped.id)] == [1, 2, 3]
    err = capsys.readouterr().err
    assert "resume.pt of run" in err and "continuing from epoch 1's weights" in err and "momentum" in err
    # nothing left to continue from: say exactly what is lost
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**CONFIG), store, StopAfter(2))
    (stopped,) = store.list_runs(status="interrupted")
    (store.root / stopped.id / "resume.pt").write_bytes(b"damaged")
    (store.root / stopped.id / "model.safetensors").unlink()
    with pytest.raises(UserError, match="cannot be read.*model.safetensors does not exist.*start a new run"):
        resume(stopped.id, store)


def test_stale_temp_files_are_cleaned_and_empty_ids_match_nothing(store_copy):
    rid = _run_id(store_copy)
    folder = store_copy.root / rid
    old, fresh = folder / ".metrics.jsonl.abc123.part", folder / ".model.safetensors.def456.part"
    for p in (old, fresh):
        p.write_bytes(b"half")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    store = RunStore(store_copy.root)
    assert [r.id for r in store.list_runs()] == [rid]
    assert not old.exists() and fresh.exists()  # a writer may still be busy with the fresh one
    for ref in ("", "  "):
        with pytest.raises(UserError, match="empty run id matches no run"):
            store.get(ref)
    code, _, err = _cli("runs", "show", "", "--runs", str(store.root))
    assert code == 2 and "empty run id" in err


def test_report_of_a_folder_that_is_not_a_run(tmp_path):
    code, _, err = _cli("report", "/etc", "--runs", str(tmp_path), "-o", str(tmp_path / "r.html"))
    assert code == 2 and "/etc is a folder but not a run folder" in err
    assert not (tmp_path / "r.html").exists()


def test_latest_says_which_run_and_can_be_scoped(tmp_path, capsys):
    store = RunStore(tmp_path)
    a = store.create_run({"model": "tiny8k", "name": "mine", "seed": 1, "tags": ["keep"]})
    time.sleep(1.1)  # `created` has whole seconds
    b = store.create_run({"model": "eip4-s2-step3", "seed": 1, "tags": ["ladder:eip4-s2"]})
    capsys.readouterr()
    assert store.get("latest").id == b.id
    line = capsys.readouterr().err.strip()
    assert line.count("\n") == 0 and b.id in line and "model eip4-s2-step3" in line and "created 20" in line
    for scope in ("tiny8k", "mine", "keep"):
        assert store.get(f"latest:{scope}").id == a.id
    assert store.get("latest:ladder:eip4-s2").id == b.id
    with pytest.raises(UserError, match="no run of model, name or tag 'nope'"):
        store.get("latest:nope")
    code, out, err = _cli("runs", "show", "latest:tiny8k", "--runs", str(tmp_path))
    assert f"latest:tiny8k = run {a.id} (name mine, model tiny8k, created" in err


# -- what `runs list/show/compare` print (audit: small floats, epochs done, how the best epoch was picked) -------

def _made_run(store: RunStore, config: dict, epochs_done: int, status: str = "running",
              result: dict | None = None) -> str:
    """A run folder written by hand (no training): config, `epochs_done` metric rows, and a result if given."""
    handle = store.create_run({"model": "tiny8k", "dataset": "synthetic", "seed": 1, "optimizer": "sgd",
                               "schedule": "onecycle", "augment": False, "batch_size": 64, **config})
    handle.write_metrics([{"epoch": e, "lr": 0.001, "train_loss": 0.5, "train_acc": 90.123, "val_acc": 98.765,
                           "test_acc": 99.4567, "epoch_time_s": 1.0} for e in range(1, epochs_done + 1)])
    if result is not None:
        best = result.get("best", {})
        handle.write_json("result.json", {"run_id": handle.id, "status": status, "params": 1000,
                                          "epochs_done": epochs_done, "train_acc_source": "seen", "wall_time_s": 12.5,
                                          "time_to_target_s": None, "gap": 0.1234, "potential": 99.3333,
                                          "verdict": "healthy", **result})
        handle.update(status=status, final_test_acc=result["final"]["test_acc"], best_val_acc=best.get("val_acc"),
                      best_epoch=best.get("epoch"), params=1000)
    elif status != "running":
        handle.update(status=status)
    return handle.id


def _row(out: str, run_id: str) -> str:
    (line,) = [line for line in out.splitlines() if line.startswith(run_id)]
    return line


def test_small_floats_keep_their_digits_and_accuracies_two_decimals(tmp_path, capsys):
    from cli_util import run_cli

    store = RunStore(tmp_path)
    final = {"final": {"test_acc": 99.4567, "train_acc": 99.58}, "best": {"epoch": 2, "val_acc": 98.765,
                                                                           "test_acc": 99.4567, "selected_by": "val"}}
    a = _made_run(store, {"lr": 0.001, "weight_decay": 5e-4, "epochs": 2}, 2, "completed", final)
    b = _made_run(store, {"lr": 0.001, "weight_decay": 0.0, "epochs": 2}, 2, "completed", final)
    code, out, err = run_cli(capsys, "runs", "show", a, "--runs", str(tmp_path))
    assert code == 0, err
    assert " lr 0.001 " in out  # was "lr 0.00"
    assert "98.77" in out and "90.12" in out  # accuracies stay at 2 decimals
    code, out, err = run_cli(capsys, "runs", "compare", a, b, "--runs", str(tmp_path))
    assert code == 0, err
    (wd,) = [line for line in out.splitlines() if line.startswith("weight_decay")]
    assert wd.split()[1:] == ["0.0005", "0"]  # was "0.00" for 5e-4, and "0.00" for 0.0 too
    assert "99.46%" in out and "0.12 " in out and "99.33 " in out  # final test, gap, potential: 2 decimals


def test_runs_list_shows_epochs_done_of_unfinished_runs(tmp_path, capsys):
    from cli_util import run_cli

    store = RunStore(tmp_path)
    running = _made_run(store, {"epochs": 12}, 3)
    killed = _made_run(store, {"epochs": 12}, 5, status="interrupted")
    done = _made_run(store, {"epochs": 2}, 2, "completed",
                     {"final": {"test_acc": 99.0}, "best": {"epoch": 2, "val_acc": 98.0, "test_acc": 99.0,
                                                            "selected_by": "val"}})
    code, out, err = run_cli(capsys, "runs", "list", "--runs", str(tmp_path))
    assert code == 0, err
    assert _row(out, running).split()[1:6:4] == ["running", "3/12"]  # was "12": the configured epochs
    assert _row(out, killed).split()[1:6:4] == ["interrupted", "5/12"]
    assert _row(out, done).split()[1:6:4] == ["completed", "2"]


def test_runs_list_says_which_split_picked_the_best_epoch(tmp_path, capsys):
    from cli_util import run_cli

    store = RunStore(tmp_path)
    on_val = _made_run(store, {"epochs": 2, "select_on": "val", "val_size": 64}, 2, "completed",
                       {"final": {"test_acc": 99.0}, "best": {"epoch": 1, "val_acc": 98.5, "test_acc": 98.9,
                                                              "selected_by": "val"}})
    on_test = _made_run(store, {"epochs": 2, "select_on": "test", "val_size": 64}, 2, "completed",
                        {"final": {"test_acc": 99.0}, "best": {"epoch": 2, "val_acc": 97.25, "test_acc": 99.1,
                                                               "selected_by": "test"}})
    code, out, err = run_cli(capsys, "runs", "list", "--runs", str(tmp_path))
    assert code == 0, err
    assert "best val" not in out.splitlines()[0]  # the column holds picks made on either split
    assert "98.50% val" in _row(out, on_val)
    row = _row(out, on_test)
    assert "99.10% test" in row and "97.25" not in row  # was 97.25 under "best val": the val acc of a test pick
    assert "picked on the test set" in out  # and the footnote says what that means


def test_index_set_up_waits_out_another_process_setting_up_the_same_file():
    """SQLite answers a journal-mode change with 'database is locked' at once (no busy handler) while another
    connection sets up the same new index: the set-up retries instead of failing the run (a CI run failed so)."""
    import sqlite3

    from convladder.runs import store as store_module

    class Busy:  # a connection whose first two set-up statements meet another process's lock
        def __init__(self, error: str) -> None:
            self.conn, self.left, self.error, self.calls = sqlite3.connect(":memory:"), 2, error, 0

        def execute(self, sql: str):
            self.calls += 1
            if self.left:
                self.left -= 1
                raise sqlite3.OperationalError(self.error)
            return self.conn.execute(sql)

    busy = Busy("database is locked")
    store_module._set_up(busy)  # type: ignore[arg-type]
    assert busy.calls >= 3 and busy.conn.execute("SELECT count(*) FROM runs").fetchone() == (0,)
    other = Busy("no such table: nothing")
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        store_module._set_up(other)  # type: ignore[arg-type]
    assert other.calls == 1  # other errors are not retried
