"""Benchmark serving on CPU: batch inference (torch, onnxruntime) and the page's answer time.

    .venv/bin/python bench/bench_serve.py [--model NAME] [--run RUN --runs DIR] [--images 20000] [--requests 50]

Targets (issue): >= 30,000 images/s batch inference on 2 cores; <= 50 ms median per drawing on localhost.
Throughput does not depend on the weights, so a registered network with random weights is the default.
Other processes on the machine skew the numbers: the table prints the load average before and after.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from convladder.serve.predict import LoadedRun, Predictor, load_run
from convladder.spec.build import build_module
from convladder.spec.notation import format_spec
from convladder.spec.registry import list_models, resolve_spec

PREFERRED = ("tiny8k", "course15k", "eip4-3rd")


def reference_model(name: str | None) -> LoadedRun:
    models = list_models()
    name = name or next((m for m in PREFERRED if m in models), "eip4-3rd")
    spec = resolve_spec(name)
    torch.manual_seed(0)
    model = build_module(spec).eval()
    return LoadedRun(f"random-{name}", Path(tempfile.gettempdir()), model, 0.1307, 0.3081,
                     {"model": name, "model_spec": format_spec(spec)}, {})


def rate(fn, n_images: int, repeats: int = 3) -> float:
    """Best of `repeats` (images/s): the least disturbed by other processes."""
    fn()  # warm-up: allocations, oneDNN primitive creation
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = max(best, n_images / (time.perf_counter() - t))
    return best


def bench_torch(run: LoadedRun, x_u8: np.ndarray, batch: int) -> float:
    predictor = Predictor.from_run(run)
    predictor.batch_size = batch
    return rate(lambda: predictor.probs(x_u8), len(x_u8))


def bench_ort(run: LoadedRun, x_u8: np.ndarray, batch: int, threads: int) -> float | str:
    try:
        from convladder.serve.export import ProbsFromPixels, _onnx_bytes, ort_probs, ort_session
    except ImportError as exc:
        return f"n/a ({exc})"
    try:
        session = ort_session(_onnx_bytes(ProbsFromPixels(run.model, run.mean, run.std).eval()), threads)
    except Exception as exc:  # noqa: BLE001 - report, don't crash the benchmark
        return f"n/a ({type(exc).__name__})"
    x01 = x_u8.astype(np.float32)[:, None] / np.float32(255)
    return rate(lambda: ort_probs(session, x01, batch), len(x_u8))


def drawing_png() -> bytes:
    """A 280x280 canvas like the page sends: a dark '7' on white."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (280, 280), 255)
    draw = ImageDraw.Draw(img)
    draw.line([(60, 60), (220, 60), (120, 240)], fill=0, width=22, joint="curve")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def bench_server(run: LoadedRun, requests: int) -> tuple[float, float]:
    """Median and 90th percentile (ms) of POST /predict round trips over one keep-alive connection."""
    from convladder.serve.server import make_server, serve_in_thread

    server = make_server(run, "127.0.0.1", 0)
    serve_in_thread(server)
    body = drawing_png()
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    times = []
    try:
        for i in range(requests + 3):
            t = time.perf_counter()
            conn.request("POST", "/predict", body=body, headers={"Content-Type": "image/png"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200, resp.status
            if i >= 3:  # the first requests warm up
                times.append((time.perf_counter() - t) * 1000)
    finally:
        conn.close()
        server.shutdown()
        server.server_close()
    return statistics.median(times), float(np.percentile(times, 90))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help=f"registered network (default: first of {', '.join(PREFERRED)} that exists)")
    ap.add_argument("--run", help="use a trained run instead (id/prefix/latest)")
    ap.add_argument("--runs", type=Path, help="run store folder")
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--batches", default="256,512,1024")
    ap.add_argument("--requests", type=int, default=50)
    args = ap.parse_args()
    run = load_run(args.run, args.runs) if args.run else reference_model(args.model)
    x_u8 = np.random.default_rng(0).integers(0, 256, (args.images, 28, 28), dtype=np.uint8)
    load_before = os.getloadavg()[0]
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for batch in (int(b) for b in args.batches.split(",")):
            rows.append((f"torch {threads}t batch {batch}", bench_torch(run, x_u8, batch)))
            rows.append((f"onnxruntime {threads}t batch {batch}", bench_ort(run, x_u8, batch, threads)))
    torch.set_num_threads(1)  # what `convladder serve` uses (--threads 1)
    median, p90 = bench_server(run, args.requests)
    load_after = os.getloadavg()[0]
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = "not installed"
    from convladder.train.runenv import cpu_model

    print(f"machine: {cpu_model()} · {os.cpu_count()} cores · "
          f"load avg {load_before:.1f} -> {load_after:.1f} (other processes share the CPU)")
    print(f"python {platform.python_version()} · torch {torch.__version__} · onnxruntime {ort_version}")
    print(f"network: {run.config.get('model')} ({run.run_id}), {args.images} images of 28x28\n")
    print(f"{'what':<28}{'result':>18}  target")
    for what, value in rows:
        shown = f"{value:,.0f} img/s" if isinstance(value, float) else value
        print(f"{what:<28}{shown:>18}  >= 30,000 img/s")
    print(f"{'page: POST /predict':<28}{f'{median:.1f} ms median':>18}  <= 50 ms  (p90 {p90:.1f} ms, {args.requests} requests)")


if __name__ == "__main__":
    main()
