"""Issue 30's adversarial matrix for bounded parsing, run bundles, output paths, damaged run folders, the server,
a full disk and signals: every vector tried, each failure counted, the bombs measured (wall time and peak memory
of the parse); the disk-full and signal tries are real CLI processes (hardening_stops.py).

    .venv/bin/python bench/bench_hardening.py [--src DIR] [--only bombs,bundles,outputs,damaged,server,diskfull,signals]
                                              [--out FILE.md]

A try passes when convladder answers with one UserError line (or, for a damaged folder, a note and exit 0)
and nothing in the run store changed; a traceback, a hang (> 20 s), a wrong exit status, or a file written
where it must not be is a failure. Each bomb runs in its own process (RLIMIT_AS 3 GiB, 20 s) so a bomb of the
old code is killed, not the machine: "peak MB" is that process's maximum RSS, "+MB" its growth during the
parse (the interpreter and imports before it excluded); a bomb passes at <= 1 s and <= 100 MB growth.
`--src /path/to/old/src` runs the bombs, disk-full and signal tries against another checkout (the before tables).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' run makers and damaged bundles: one definition
sys.path.insert(0, str(ROOT / "bench"))
from hardening_stops import HEADER, diskfull, signals  # noqa: E402 - disk full and signals: real CLI processes

STOPS = {"diskfull": ("A full disk (3 MB tmpfs)", diskfull), "signals": ("SIGTERM / SIGINT", signals)}

LIMIT_S, LIMIT_MB = 1.0, 100.0
Result = tuple[str, bool, str]  # case, passed, detail


# -- bombs: one process each ------------------------------------------------------------------------------
def laughs(levels: int, key: str = "title", width: int = 9, indent: str = "") -> str:
    from test_hardening import laughs as make

    return make(levels, key=key, width=width, indent=indent)


def bomb_cases(tmp: Path) -> dict[str, tuple[str, str]]:
    """case -> (file written, Python call in the child that reads it)."""
    files: dict[str, tuple[str, str, str]] = {
        "ladder title, 9**9 laughs": ("ladder.yaml", laughs(9) + "base: {model: tiny8k}\nsteps: [{change: x}]\n",
                                      "from convladder.ladder.ladder import load_ladder as f; f(P)"),
        "sweep value, 9**9 laughs": ("sweep.yaml", "name: s\nmodel: tiny8k\nparams:\n  lr:\n"
                                     + laughs(9, key="values", indent="    "),
                                     "from convladder.executors.sweepspec import load_sweep as f; f(P)"),
        "frontier base tags, 9**9 laughs": ("frontier.yaml", "name: f\nbudgets: [5000]\nbase:\n"
                                            + laughs(9, key="tags", indent="  "),
                                            "from convladder.executors.frontierspec import load_frontier as f; f(P)"),
        "config tags, 9**9 laughs": ("config.yaml", laughs(9, key="tags"),
                                     "from convladder.train.config import load_config_file as f; f(P)"),
        "spec .yaml, 9**9 laughs": ("spec.yaml", laughs(9, key="blocks"),
                                    "from convladder.spec.yamlform import load_spec_file as f; f(Path(P))"),
        "merge keys, 10 levels of 10": ("merge.yaml", "a0: &a0 {k0: 1}\n" + "".join(
            f"a{i}: &a{i} [" + ", ".join(f"{{<<: *a{i - 1}, m{j}: {j}}}" for j in range(10)) + "]\n" for i in range(1, 11)),
            "from convladder.train.config import load_config_file as f; f(P)"),
        "config nested 100,000 deep (flow)": ("deep.yaml", "tags: " + "[" * 100_000 + "]" * 100_000 + "\n",
                                              "from convladder.train.config import load_config_file as f; f(P)"),
        "ladder nested 100,000 deep (flow)": ("deep-ladder.yaml", "title: " + "{a: " * 100_000 + "1" + "}" * 100_000,
                                              "from convladder.ladder.ladder import load_ladder as f; f(P)"),
        "ladder nested 1,000 deep (indentation)": ("block.yaml", "".join(" " * i + f"k{i}:\n" for i in range(1000))
                                                   + " " * 1000 + "v: 1\n",
                                                   "from convladder.ladder.ladder import load_ladder as f; f(P)"),
        "config of 10**6 keys": ("million.yaml", "".join(f"k{i}: {i}\n" for i in range(1_000_000)),
                                 "from convladder.train.config import build_config as f; f(P)"),
        "config of 50,000 unknown keys (under 1 MiB)": ("many.yaml", "".join(f"x{i}: 1\n" for i in range(50_000)),
                                                         "from convladder.train.config import build_config as f; f(P)"),
        "ladder of 50,000 unknown training keys": ("many-ladder.yaml", "base:\n  model: tiny8k\n  config:\n"
                                                   + "".join(f"    x{i}: 1\n" for i in range(50_000)) + "steps: [{change: x}]\n",
                                                   "from convladder.ladder.ladder import load_ladder as f; f(P)"),
        "ladder of 5,000 unknown training keys (under the node bound)": (
            "few-ladder.yaml", "base:\n  model: tiny8k\n  config:\n    epoch: 3\n"
            + "".join(f"    x{i}: 1\n" for i in range(5_000)) + "steps: [{change: x}]\n",
            "from convladder.ladder.ladder import load_ladder as f; f(P)"),
        "config of 5,000 unknown keys (under the node bound)": (
            "few.yaml", "epoch: 3\n" + "".join(f"x{i}: 1\n" for i in range(5_000)),
            "from convladder.train.config import build_config as f; f(P)"),
        "config value of 900 KB": ("long.yaml", "epochs: " + "9x" * 450_000 + "\n",
                                   "from convladder.train.config import build_config as f; f(P)"),
        "config key of 900 KB": ("longkey.yaml", "k" * 900_000 + ": 1\n",
                                 "from convladder.train.config import build_config as f; f(P)"),
        "int of 5,000 digits": ("bigint.yaml", "epochs: " + "9" * 5000 + "\n",
                                "from convladder.train.config import build_config as f; f(P)"),
        "alias loop": ("loop.yaml", "tags: &a [*a]\n", "from convladder.train.config import load_config_file as f; f(P)"),
        "two documents": ("two.yaml", "epochs: 1\n---\nepochs: 2\n",
                          "from convladder.train.config import load_config_file as f; f(P)"),
        "--model-args of 120 KB, invalid": ("", "", "from convladder.spec.own import parse_model_args as f; "
                                             "f('{\"width\": ' + 'x' * 120_000 + '}')"),
        "--model-args nested 30,000 deep": ("", "", "from convladder.spec.own import parse_model_args as f; "
                                            "f('[' * 30_000 + ']' * 30_000)"),
    }
    out = {}
    for case, (name, text, call) in files.items():
        if name:
            (tmp / name).write_text(text)
        out[case] = (str(tmp / name) if name else "", call)
    return out


CHILD = textwrap.dedent("""
    import json, resource, sys, time, traceback
    from pathlib import Path
    from convladder.errors import UserError
    import convladder.train.config, convladder.ladder.ladder, convladder.executors.frontierspec  # imports first
    import convladder.spec.own, convladder.spec.yamlform  # (torch loads lazily now: not inside the measured parse)
    P = sys.argv[1]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    try:
        exec(sys.argv[2])
        out = {"kind": "accepted"}
    except UserError as exc:
        out = {"kind": "UserError", "chars": len(str(exc)), "lines": str(exc).count(chr(10)) + 1,
               "message": str(exc)[:150]}
    except BaseException as exc:
        out = {"kind": type(exc).__name__, "lines": len(traceback.format_exc().splitlines()),
               "message": str(exc)[:150]}
    out["s"] = time.perf_counter() - t
    out["before_mb"] = before / 1024
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))
""")


def run_child(path: str, call: str, src: str | None) -> dict:
    env = dict(os.environ, PYTHONPATH=src or str(ROOT / "src"))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, path, call], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=limit)
    try:
        out, err = proc.communicate(timeout=20 + 15)  # 15 s for the imports on a loaded machine
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"kind": "killed after 35 s", "s": time.perf_counter() - start, "peak_mb": float("nan")}
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        last = (err.strip().splitlines() or ["?"])[-1]
        return {"kind": f"crashed (exit {proc.returncode}: {last[:80]})", "s": float("nan"), "peak_mb": float("nan")}


def bombs(tmp: Path, src: str | None) -> tuple[list[Result], list[str]]:
    results, rows = [], ["| case | answer | s | peak MB | +MB | message chars |", "|---|---|---|---|---|---|"]
    for case, (path, call) in bomb_cases(tmp).items():
        r = run_child(path, call, src)
        grew = r.get("peak_mb", float("nan")) - r.get("before_mb", float("nan"))
        ok = (r["kind"] == "UserError" and r.get("lines") == 1 and r["s"] <= LIMIT_S and grew <= LIMIT_MB
              and r.get("chars", 0) <= 600)
        rows.append(f"| {case} | {r['kind']} | {r['s']:.3f} | {r.get('peak_mb', float('nan')):.0f} | {grew:.1f} | "
                    f"{r.get('chars', '-')} |")
        results.append((case, ok, f"{r['kind']}: {r.get('message', '')[:90]}"))
    return results, rows


# -- in-process vectors ------------------------------------------------------------------------------------
def cli(*args: str, timeout: float = 20.0) -> tuple[int | str, str, str]:
    """The real entry point in-process: (exit code or 'traceback: X' / 'hang', stdout, stderr)."""
    from convladder.cli import main

    box: list = []

    def go() -> None:
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                main(list(args))
            code: int | str = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - the vector: anything else is a traceback
            code = f"traceback: {type(exc).__name__}: {str(exc)[:80]}"
        box.append((code, out.getvalue(), err.getvalue()))

    worker = threading.Thread(target=go, daemon=True)
    worker.start()
    worker.join(timeout)
    return box[0] if box else ("hang", "", "")


def bundles(tmp: Path) -> list[Result]:
    from test_hardening import _damaged_bundles, made_run

    from convladder.errors import UserError
    from convladder.runs.pack import import_run, pack_runs
    from convladder.runs.store import RunStore

    made_run(tmp / "a", message="every e stays")
    (bundle,) = pack_runs(tmp / "a")
    target = tmp / "b"
    made_run(target)
    results = []
    for what, damaged in _damaged_bundles(bundle).items():
        try:
            import_run(target, damaged)
            results.append((what, False, "imported"))
        except UserError as exc:
            results.append((what, "\n" not in str(exc), str(exc)[:90]))
        except Exception as exc:  # noqa: BLE001
            results.append((what, False, f"{type(exc).__name__}: {str(exc)[:80]}"))
    clean = len(RunStore(target).run_folders()) == 1 and not [p for p in target.iterdir() if p.name.startswith(".")]
    results.append(("store unchanged after the damaged bundles", clean, f"{len(RunStore(target).run_folders())} run(s)"))
    new = import_run(target, bundle)
    got = json.loads((target / new / "result.json").read_text())
    results.append(("result.json rewritten by parse+dump", got["run_id"] == new and got["message"] == "every e stays",
                    got["message"]))
    rid = RunStore(tmp / "a").list_runs()[0].id
    (tmp / "secret").write_text("TOKEN")
    (tmp / "a" / rid / "environ").symlink_to(tmp / "secret")
    os.mkfifo(tmp / "a" / rid / "pipe")
    box: list = []
    worker = threading.Thread(target=lambda: box.append(pack_runs(tmp / "a")), daemon=True)
    worker.start()
    worker.join(20)
    packed = box[0][0] if box else None
    results.append(("pack skips a symlink (no secret copied)", packed is not None and "environ" not in packed["files"],
                    "hang" if packed is None else f"skipped {packed.get('skipped')}"))
    results.append(("pack skips a FIFO (no hang)", packed is not None and "pipe" not in packed["files"], ""))
    return results


def outputs(tmp: Path) -> list[Result]:
    from test_hardening import net_run

    store = tmp / "runs"
    rid = net_run(store)
    weights, index = (store / rid / "model.safetensors").read_bytes(), (store / "index.sqlite").read_bytes()[:100]
    blocker = tmp / "a-file"
    blocker.write_text("x")
    (tmp / "dir").mkdir()
    os.mkfifo(tmp / "fifo.png")
    (tmp / "link.html").symlink_to(store / rid / "report.html")
    (tmp / "imgs").mkdir()
    os.mkfifo(tmp / "imgs" / "x.png")
    runs = ("--runs", str(store))
    refused = [
        ("export -o <run>/model.safetensors", ("export", rid, *runs, "-o", str(store / rid / "model.safetensors"))),
        ("export -o <store>/index.sqlite", ("export", rid, *runs, "-o", str(store / "index.sqlite"))),
        ("export -o <run folder>", ("export", rid, *runs, "-o", str(store / rid))),
        ("report -o <store>/index.sqlite", ("report", rid, *runs, "-o", str(store / "index.sqlite"))),
        ("report -o <run>/config.json", ("report", rid, *runs, "-o", str(store / rid / "config.json"))),
        ("report <run folder> -o <run folder> (no --runs)", ("report", str(store / rid), "-o", str(store / rid))),
        ("report -o a symlink into a run folder", ("report", rid, *runs, "-o", str(tmp / "link.html"))),
        ("report -o under a regular file", ("report", rid, *runs, "-o", str(blocker / "r.html"))),
        ("export -o under a regular file", ("export", rid, *runs, "-o", str(blocker / "m.onnx"))),
        ("report -o /proc (read-only)", ("report", rid, *runs, "-o", "/proc/convladder-report.html")),
        ("report -o an existing FIFO", ("report", rid, *runs, "-o", str(tmp / "fifo.png"))),
        ("predict a FIFO", ("predict", rid, *runs, str(tmp / "fifo.png"))),
        ("predict /dev/zero", ("predict", rid, *runs, "/dev/zero")),
        ("predict a folder whose only .png is a FIFO", ("predict", rid, *runs, str(tmp / "imgs"))),
    ]
    results = []
    for what, args in refused:
        start = time.perf_counter()
        code, out, err = cli(*args)
        took = time.perf_counter() - start
        ok = code == 2 and err.count("\n") <= 1 and took < 5
        results.append((what, ok, f"{code} in {took:.1f} s: {err.strip()[:90]}"))
        if code == "hang":  # free the thread blocked on the FIFO
            for fifo in (tmp / "fifo.png", tmp / "imgs" / "x.png"):
                with contextlib.suppress(OSError):
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    intact = (store / rid / "model.safetensors").read_bytes() == weights and \
        (store / "index.sqlite").read_bytes()[:100] == index
    results.append(("run weights and index intact", intact, ""))
    code, out, err = cli("export", rid, *runs, "-o", str(tmp / "dir"), "--no-check")
    results.append(("export -o <existing folder> writes <run id>.onnx in it",
                    code == 0 and (tmp / "dir" / f"{rid}.onnx").is_file(), str(code)))
    return results


def damaged(tmp: Path) -> list[Result]:
    import torch
    from safetensors.torch import load_file, save_file
    from test_hardening import ladder_runs, net_run

    path, root, step1 = ladder_runs(tmp)
    result = root / step1 / "result.json"
    saved = result.read_text()
    res = json.loads(saved)
    cases: list[tuple[str, str | None]] = [
        ("result.json missing", None), ("final is a list", json.dumps({**res, "final": [1, 2]})),
        ("final is text", json.dumps({**res, "final": "99"})), ("best is a list", json.dumps({**res, "best": [1]})),
        ("final.test_acc is text", json.dumps({**res, "final": {**res["final"], "test_acc": "abc"}})),
        ("final.test_acc is 1e9", json.dumps({**res, "final": {**res["final"], "test_acc": 1e9}})),
        ("status missing", json.dumps({k: v for k, v in res.items() if k != "status"})),
        ("result.json not JSON", '{"status": "compl'), ("result.json a list", "[1, 2]"),
        ("result.json nested 100,000 deep", "[" * 100_000 + "]" * 100_000),
        ("result.json not UTF-8", "\udcff"),
    ]
    results = []
    for what, text in cases:
        if text is None:
            result.unlink(missing_ok=True)
        elif text == "\udcff":
            result.write_bytes(b"\xff\xfe{}")
        else:
            result.write_text(text)
        code, out, err = cli("ladder", "report", str(path), "--runs", str(root))
        note = f"run {step1}: " in out  # the note, in the reading or under it
        results.append((f"ladder report: {what}", code == 0 and note, f"{code}: {err.strip()[-90:]}"))
        result.write_text(saved)
    from convladder.errors import UserError
    from convladder.train.models import create_model

    store = tmp / "weights-runs"
    rid = net_run(store)
    wpath = store / rid / "model.safetensors"
    weights = load_file(wpath)
    first = next(k for k, v in weights.items() if v.is_floating_point())
    edits: dict[str, Callable[[dict], dict]] = {
        "weights cast to int8": lambda w: {k: v.to(torch.int8) if v.is_floating_point() else v for k, v in w.items()},
        "weights cast to bool": lambda w: {k: v.bool() if v.is_floating_point() else v for k, v in w.items()},
        "a tensor of another shape": lambda w: {**w, first: w[first][:1]},
        "a tensor missing": lambda w: {k: v for k, v in w.items() if k != first},
        "an extra tensor": lambda w: {**w, "extra.weight": torch.zeros(2)},
    }
    for what, edit in edits.items():
        save_file(edit(weights), wpath)
        try:
            create_model(store / rid)
            results.append((what, False, "loaded"))
        except UserError as exc:
            named = first in str(exc) or "extra.weight" in str(exc)
            results.append((what, named and "\n" not in str(exc), str(exc)[-90:]))
        except Exception as exc:  # noqa: BLE001
            results.append((what, False, f"{type(exc).__name__}: {str(exc)[:80]}"))
    return results


def server(tmp: Path) -> list[Result]:
    """The page server with 64 workers: 64 clients dripping one byte every 5-9 s, then a normal request; HEAD,
    OPTIONS, two Content-Lengths, an oversized Content-Length, bytes that are no image."""
    import random
    import socket

    from test_hardening import net_run, raw

    from convladder.serve import server as srv
    from convladder.serve.predict import load_run

    root = tmp / "runs"
    app = srv.make_server(load_run(net_run(root), root), "127.0.0.1", 0)
    srv.serve_in_thread(app)
    port = app.server_address[1]
    stop = threading.Event()

    def drip(seed: int) -> None:
        rng = random.Random(seed)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            for byte in b"GET /api/info HTTP/1.1\r\nHost: x\r\n" * 4:
                if stop.wait(rng.uniform(5, 9)):
                    return
                s.sendall(bytes([byte]))

    results = []
    try:
        for i in range(64):
            threading.Thread(target=drip, args=(i,), daemon=True).start()
        time.sleep(12)  # every worker holds a dripping client now
        start = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
                s.sendall(b"GET /api/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = s.recv(1 << 16)
        except OSError as exc:
            answer = repr(exc).encode()
        took = time.perf_counter() - start
        results.append(("GET /api/info beside 64 dripping clients", answer.startswith(b"HTTP/1.1 200") and took < 20,
                         f"{answer[:15]!r} in {took:.1f} s"))
        checks = [
            ("HEAD /api/info", b"HEAD /api/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"HTTP/1.1 200", b""),
            ("OPTIONS /", b"OPTIONS / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"HTTP/1.1 204", b"Allow:"),
            ("two different Content-Lengths", b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
             b"Content-Length: 40\r\n\r\nabcd", b"HTTP/1.1 400", b"Content-Length headers"),
            ("a 30-digit Content-Length", b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 30
             + b"\r\n\r\n", b"HTTP/1.1 413", b"30-digit"),
            ("bytes that are no image", b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
             b"Content-Length: 4\r\nConnection: close\r\n\r\nabcd", b"HTTP/1.1 400", b"the bytes"),
        ]
        for what, request, status, text in checks:
            got = raw(port, request)
            ok = got.startswith(status) and text in got and b"object at 0x" not in got
            results.append((what, ok, got.split(b"\r\n")[0].decode(errors="replace")))
    finally:
        stop.set()
        app.shutdown()
        app.server_close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", help="run the bombs against this src folder (another checkout)")
    parser.add_argument("--only", default="bombs,bundles,outputs,damaged,server,diskfull,signals")
    parser.add_argument("--out", help="also write the tables to this markdown file")
    args = parser.parse_args()
    groups = args.only.split(",")
    table = ["| vector | tried | failed | failures |", "|---|---|---|---|"]
    details: list[str] = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        plan: dict[str, Callable[[Path], list[Result]]] = {"bundles": bundles, "outputs": outputs, "damaged": damaged,
                                                            "server": server}
        for group in groups:
            (tmp / group).mkdir()
            start = time.perf_counter()
            if group == "bombs":
                results, rows = bombs(tmp / group, args.src)
                details += ["", f"### YAML and JSON bombs ({args.src or 'this checkout'})", "", *rows]
            elif group in STOPS:  # real CLI processes of the code under test (hardening_stops.py)
                title, run_group = STOPS[group]
                results, rows = run_group(tmp / group, args.src or str(ROOT / "src"))
                table_rows = [r for r in rows if r.startswith("|")]
                details += ["", f"### {title} ({args.src or 'this checkout'})", "",
                            *([*HEADER, *table_rows] if table_rows else rows)]
            else:
                results = plan[group](tmp / group)
            failed = [r for r in results if not r[1]]
            table.append(f"| {group} | {len(results)} | {len(failed)} | "
                         + "; ".join(f"{c} ({d})" for c, _, d in failed)[:400].replace("|", "/") + " |")
            print(f"{group}: {len(results)} tried, {len(failed)} failed ({time.perf_counter() - start:.0f} s)",
                  file=sys.stderr)
            for case, ok, detail in results:
                print(f"  {'ok  ' if ok else 'FAIL'} {case}: {detail}", file=sys.stderr)
    head = (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
            f"{platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M')}")
    text = "\n".join([head, "", *table, *details])
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
