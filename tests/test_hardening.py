"""Issue 30's vectors, one test each: YAML/JSON bombs, damaged bundles, outputs onto inputs, damaged run
folders. Each is refused with one UserError (or a note) quickly; none needs real data or training."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from convladder.errors import UserError


def laughs(levels: int, key: str = "title", width: int = 9, indent: str = "") -> str:
    """A billion-laughs YAML mapping: `key` holds width**levels strings built from `levels` anchors."""
    lines = [f'{indent}l0: &l0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"{indent}l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    lines.append(f"{indent}{key}: *l{levels}")
    return "\n".join(lines) + "\n"


def refused(fn, *args, match: str, seconds: float = 1.0) -> str:
    """fn(*args) raises one UserError matching `match` within `seconds` of this process's CPU time (a bomb
    expanded costs CPU; wall time would also count the other jobs on a shared 2-core machine: 1.6 s once, beside
    two trainings); returns the message."""
    start = time.process_time()
    with pytest.raises(UserError, match=match) as info:
        fn(*args)
    assert time.process_time() - start <= seconds
    text = str(info.value)
    assert "\n" not in text and len(text) < 600, text[:300]
    return text


# -- bounded parsing ------------------------------------------------------------------------------------------
# 9**7 = 4.8 million strings after expansion: old code loaded it in milliseconds and then expanded it in
# str()/json.dumps (a 9**9 document grew past 2.9 GB); the bound refuses it while composing
def test_yaml_bombs_are_refused_in_ladder_sweep_and_config_files(tmp_path: Path) -> None:
    from convladder.executors.sweepspec import load_sweep
    from convladder.ladder.ladder import load_ladder
    from convladder.train.config import load_config_file

    ladder = tmp_path / "bomb-ladder.yaml"
    ladder.write_text(laughs(7) + "base: {model: tiny8k}\nsteps: [{change: x}]\n")
    refused(load_ladder, str(ladder), match="aliases")
    sweep = tmp_path / "bomb-sweep.yaml"
    sweep.write_text("name: s\nmodel: tiny8k\nparams:\n  lr:\n" + laughs(7, key="values", indent="    "))
    refused(load_sweep, sweep, match="aliases")
    config = tmp_path / "bomb-config.yaml"
    config.write_text(laughs(7, key="tags"))
    refused(load_config_file, config, match="aliases")


def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path: Path) -> None:
    from convladder.ladder.ladder import load_ladder
    from convladder.train.config import load_config_file

    flow = tmp_path / "flow.yaml"
    flow.write_text("tags: " + "[" * 100_000 + "]" * 100_000 + "\n")
    refused(load_config_file, flow, match="nest")
    block = tmp_path / "block.yaml"  # indentation nesting, below libyaml's own flow limit
    block.write_text("".join(" " * i + f"k{i}:\n" for i in range(200)) + " " * 200 + "v: 1\n")
    refused(load_ladder, str(block), match="nested more than 64 levels")


def test_a_config_of_a_million_keys_is_refused_quickly_and_unknown_keys_are_few(tmp_path: Path) -> None:
    from convladder.ladder.ladder import load_ladder
    from convladder.train.config import load_config_file

    big = tmp_path / "big.yaml"
    big.write_text("".join(f"k{i}: {i}\n" for i in range(1_000_000)))
    refused(load_config_file, big, match="larger than")
    many = tmp_path / "many.yaml"  # under the size bound: the unknown keys are named, three of them
    many.write_text("base:\n  model: tiny8k\n  config:\n    epoch: 3\n"
                    + "".join(f"    key{i}: {i}\n" for i in range(5000)) + "steps: [{change: x}]\n")
    text = refused(load_ladder, str(many), match="and 4,998 more")
    assert "'epoch' (did you mean 'epochs'?)" in text and text.count("'key") <= 2


def test_long_model_args_are_cut_in_the_message() -> None:
    from convladder.spec.own import parse_model_args

    text = refused(parse_model_args, '{"width": ' + "x" * 120_000 + "}", match="characters")
    assert len(text) < 400
    text = refused(parse_model_args, '{"width": ' + "x" * 5_000 + "}", match="not valid JSON")
    assert "5,011 characters" in text
    refused(parse_model_args, "[" * 20_000 + "]" * 20_000, match="cannot be read|nests")


# -- bundles are data ---------------------------------------------------------------------------------------
def made_run(root: Path, message: str = "") -> str:
    """A finished run written through the store by hand (no training): config, metrics, weights, result."""
    from convladder.runs.store import RunStore

    store = RunStore(root)
    handle = store.create_run({"model": "tiny8k", "dataset": "synthetic", "seed": 1, "epochs": 1, "name": "n"},
                              {"input_shape": [1, 28, 28]})
    handle.write_metrics([{"epoch": 1, "lr": 0.1, "train_loss": 0.5, "train_acc": 90.0, "test_acc": 91.0}])
    handle.save_weights("model", {"w": torch.ones(3)}, epoch=1)
    handle.write_json("result.json", {"run_id": handle.id, "status": "completed", "params": 3, "epochs_done": 1,
                                      "final": {"test_acc": 91.0}, "best": {"epoch": 1}, "message": message})
    handle.update(status="completed", final_test_acc=91.0, best_epoch=1, params=3)
    return handle.id


def test_a_bundle_round_trips_and_result_json_is_parsed_not_text_replaced(tmp_path: Path) -> None:
    from convladder.runs.pack import import_run, pack_runs
    from convladder.runs.store import RunStore

    rid = made_run(tmp_path / "a", message="every e stays")
    (bundle,) = pack_runs(tmp_path / "a")
    result = json.loads(bundle["files"]["result.json"])
    result["message"] = f"copied from {rid}"  # the old id elsewhere in the file is text, not a reference
    bundle["files"]["result.json"] = json.dumps(result).encode()
    new = import_run(tmp_path / "b", bundle)
    got = json.loads((tmp_path / "b" / new / "result.json").read_text())
    assert got["run_id"] == new and got["message"] == f"copied from {rid}"
    record = RunStore(tmp_path / "b").get(new)
    assert (record.status, record.final_test_acc, record.params) == ("completed", 91.0, 3)
    assert (tmp_path / "b" / new / "model.safetensors").read_bytes() == (tmp_path / "a" / rid / "model.safetensors").read_bytes()
    assert not [p for p in (tmp_path / "b").iterdir() if p.name.startswith(".import")]


def _damaged_bundles(bundle: dict) -> dict[str, dict]:
    def edit(record=None, files=None, drop=()):
        b = json.loads(json.dumps({"record": bundle["record"]}))  # a deep copy of the record
        b["record"].update(record or {})
        for key in drop:
            b["record"].pop(key, None)
        b["files"] = {**bundle["files"], **(files or {})}
        return b

    result = json.loads(bundle["files"]["result.json"])

    def res(**changes):
        return {"result.json": json.dumps({**result, **changes}).encode()}

    no_status = dict(result)
    no_status.pop("status")
    return {
        "NUL in a name": edit(files={"a\0b": b"x"}),
        "300-character name": edit(files={"x" * 300: b"x"}),
        "path in a name": edit(files={"../escape.json": b"{}"}),
        "non-UTF-8 result.json": edit(files={"result.json": b"\xff\xfe{}"}),
        "status missing": edit(files={"result.json": json.dumps(no_status).encode()}),
        "status None": edit(files=res(status=None)),
        "status a list": edit(files=res(status=["completed"])),
        "status any text": edit(files=res(status="best ever")),
        "run id empty": edit(record={"id": ""}),
        "run id 'e'": edit(record={"id": "e"}),
        "created 9999": edit(record={"created": "9999-12-31T23:59:59"}),
        "created any text": edit(record={"created": "yesterday"}),
        "accuracy 1e9": edit(record={"final_test_acc": 1e9}),
        "file not bytes": edit(files={"metrics.jsonl": "text"}),
        "weights cut short": edit(files={"model.safetensors": bundle["files"]["model.safetensors"][:20]}),
        "config of the wrong type": edit(files={"config.json": b'{"seed": "one"}'}),
    }


def test_damaged_bundles_are_refused_before_any_folder_is_made(tmp_path: Path) -> None:
    from convladder.runs.pack import import_run, pack_runs
    from convladder.runs.store import RunStore

    made_run(tmp_path / "a")
    (bundle,) = pack_runs(tmp_path / "a")
    target = tmp_path / "b"
    made_run(target)  # the store already holds a run; it must stay the only one
    failed = []
    for what, damaged in _damaged_bundles(bundle).items():
        try:
            import_run(target, damaged)
            failed.append(f"{what}: imported")
        except UserError as exc:
            if "\n" in str(exc) or "nothing was imported" not in str(exc):
                failed.append(f"{what}: {exc}")
        except Exception as exc:  # noqa: BLE001 - the vector: any other exception is a crash
            failed.append(f"{what}: {type(exc).__name__}: {str(exc)[:80]}")
    assert failed == []
    assert len(RunStore(target).run_folders()) == 1 and len(RunStore(target).list_runs()) == 1
    assert [p.name for p in target.iterdir() if p.name.startswith(".")] == []


def test_pack_copies_regular_files_only_and_says_what_it_skipped(tmp_path: Path, capsys) -> None:
    from convladder.runs.pack import pack_runs

    secret = tmp_path / "secret.txt"
    secret.write_text("TOKEN=1")
    rid = made_run(tmp_path / "a")
    folder = tmp_path / "a" / rid
    (folder / "env2.json").symlink_to(secret)
    os.mkfifo(folder / "pipe")
    start = time.perf_counter()
    (bundle,) = pack_runs(tmp_path / "a")
    assert time.perf_counter() - start < 5  # a FIFO is not opened for reading (it would block)
    assert "env2.json" not in bundle["files"] and "pipe" not in bundle["files"]
    assert sorted(bundle["skipped"]) == ["env2.json", "pipe"]
    assert "not packed (not regular files): 'env2.json', 'pipe'" in capsys.readouterr().err


# -- outputs never clobber inputs ---------------------------------------------------------------------------
def net_run(root: Path) -> str:
    """A run of tiny8k with untrained weights, written through the store (enough for export and report)."""
    from convladder.runs.store import RunStore
    from convladder.spec.build import build_module
    from convladder.spec.notation import format_spec
    from convladder.spec.registry import resolve_spec

    torch.manual_seed(0)
    spec = resolve_spec("tiny8k")
    handle = RunStore(root).create_run({"model": "tiny8k", "model_spec": format_spec(spec), "dataset": "synthetic"},
                                       {"input_shape": [1, 28, 28], "data_mean": 0.13, "data_std": 0.31})
    handle.save_weights("model", build_module(spec).state_dict())
    return handle.id


def test_outputs_inside_a_run_folder_or_onto_the_index_are_refused(tmp_path: Path, capsys) -> None:
    from cli_util import run_cli

    store = tmp_path / "runs"
    rid = net_run(store)
    weights = (store / rid / "model.safetensors").read_bytes()
    index = (store / "index.sqlite").read_bytes()
    code, _, err = run_cli(capsys, "export", rid, "--runs", str(store), "-o", str(store / rid / "model.safetensors"))
    assert code == 2 and "inside" in err and "Traceback" not in err
    assert (store / rid / "model.safetensors").read_bytes() == weights
    start = time.perf_counter()
    code, _, err = run_cli(capsys, "report", rid, "--runs", str(store), "-o", str(store / "index.sqlite"))
    assert code == 2 and "index" in err and time.perf_counter() - start < 5
    assert (store / "index.sqlite").read_bytes()[:16] == index[:16] == b"SQLite format 3\x00"
    code, _, err = run_cli(capsys, "report", str(store / rid), "-o", str(store / rid))  # a run folder as target
    assert code == 2 and "inside" in err


def test_unwritable_output_is_refused_before_the_work_and_a_folder_takes_a_default_name(tmp_path: Path, capsys) -> None:
    from cli_util import run_cli

    store = tmp_path / "runs"
    rid = net_run(store)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    start = time.perf_counter()
    code, _, err = run_cli(capsys, "report", rid, "--runs", str(store), "-o", str(blocker / "r.html"))
    assert code == 2 and "cannot write" in err and time.perf_counter() - start < 5
    folder = tmp_path / "out"
    folder.mkdir()
    code, out, err = run_cli(capsys, "export", rid, "--runs", str(store), "-o", str(folder), "--no-check")
    assert code == 0, err
    assert (folder / f"{rid}.onnx").is_file()


def test_a_fifo_given_to_predict_is_refused_at_once(tmp_path: Path) -> None:
    import threading

    from convladder.serve.preprocess import load_inputs

    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            load_inputs([fifo])
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():  # the old code blocks in open(): give it a writer so the thread ends
        os.close(os.open(fifo, os.O_WRONLY))
        worker.join(5)
    assert outcome and isinstance(outcome[0], UserError) and "not a regular file" in str(outcome[0])


# -- damaged run folders ------------------------------------------------------------------------------------
def ladder_runs(tmp_path: Path) -> tuple[Path, Path, str]:
    """(ladder file, run store, run id of step 1): test_ladder's SMALL, steps 1-2 trained (synthetic, 1 epoch)."""
    from test_ladder import SMALL

    from convladder.ladder.ladder import load_ladder
    from convladder.ladder.run import run_ladder
    from convladder.runs.store import RunStore

    torch.set_num_threads(1)
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    root = tmp_path / "runs"
    run_ladder(load_ladder(str(path)), root, steps="1-2", seeds=1, epochs=1, subset=256, dataset="synthetic",
               echo=lambda line: None)
    return path, root, next(r.id for r in RunStore(root).list_runs() if "step:1" in r.tags)


def test_ladder_report_notes_a_missing_or_damaged_result_json(tmp_path: Path, capsys) -> None:
    from cli_util import run_cli

    path, root, step1 = ladder_runs(tmp_path)
    result = root / step1 / "result.json"
    saved = json.loads(result.read_text())
    for damage, note in [(None, "result.json is missing"), ({**saved, "final": [1, 2]}, "result.json: `final` holds a JSON list")]:
        if damage is None:
            result.unlink()
        else:
            result.write_text(json.dumps(damage))
        code, out, err = run_cli(capsys, "ladder", "report", str(path), "--runs", str(root))
        assert code == 0 and "Traceback" not in err, err
        assert f"no final numbers: run {step1}: {note}" in out, out


def test_weights_of_another_dtype_or_shape_are_refused_naming_the_tensor(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from convladder.train.models import create_model

    root = tmp_path / "runs"
    rid = net_run(root)
    path = root / rid / "model.safetensors"
    weights = load_file(path)
    first = next(k for k, v in weights.items() if v.is_floating_point())
    save_file({k: v.to(torch.int8) if v.is_floating_point() else v for k, v in weights.items()}, path)
    refused(create_model, root / rid, match=f"tensor {first} is int8, the network's is float32", seconds=10)
    save_file({**weights, first: weights[first][:1]}, path)
    refused(create_model, root / rid, match=rf"tensor {first} has shape \(1,", seconds=10)


# -- the server ---------------------------------------------------------------------------------------------
from test_server import loaded, run_dir, start  # noqa: E402, F401 - the page server's fixtures, reused


def raw(port: int, data: bytes) -> bytes:
    """Send `data`, read the answer until the server closes or 5 s pass."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(1 << 16):  # every request here asks the server to close
                out += chunk
        except TimeoutError:
            pass
    return out


def test_server_answers_head_and_options_and_refuses_two_content_lengths(start) -> None:
    port = start()
    head = raw(port, b"HEAD /api/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")  # headers, no body
    options = raw(port, b"OPTIONS / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert options.startswith(b"HTTP/1.1 204") and b"Allow: GET, HEAD, POST, OPTIONS" in options
    two = raw(port, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 4\r\n"
                    b"Content-Length: 40\r\n\r\nabcd")
    assert two.startswith(b"HTTP/1.1 400") and b"2 different Content-Length headers" in two
    huge = raw(port, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 30 + b"\r\n\r\n")
    assert huge.startswith(b"HTTP/1.1 413") and b"a 30-digit number of bytes" in huge
    junk = raw(port, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 4\r\n"
                     b"Connection: close\r\n\r\nabcd")
    assert junk.startswith(b"HTTP/1.1 400") and b"object at 0x" not in junk


def test_slow_drip_clients_cannot_hold_every_worker(start) -> None:
    import socket

    port = start(workers=2, timeout=3.0)  # each drip byte comes well within the per-read timeout
    stop = threading.Event()

    def drip() -> None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            for byte in b"GET /api/info HTTP/1.1\r\nHost: x\r\n" * 10:
                if stop.is_set():
                    return
                s.sendall(bytes([byte]))
                time.sleep(1.0)

    drippers = [threading.Thread(target=drip, daemon=True) for _ in range(2)]
    for t in drippers:
        t.start()
    time.sleep(0.5)
    start = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
            s.sendall(b"GET /api/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = s.recv(1 << 16)
    finally:
        stop.set()
    assert answer.startswith(b"HTTP/1.1 200") and time.perf_counter() - start < 10
