"""CLI commands of the serve area: `predict`, `export`, `serve`."""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path
from typing import Optional

import typer

from convladder.errors import UserError

RUNS_HELP = "Run store folder (default: $CONVLADDER_RUNS or ./runs)."
WHICH_HELP = "Weights to use: final (model.safetensors) or best (best.safetensors)."


def predict_cmd(
    run: str = typer.Argument(..., help="Run id, unique id prefix, or 'latest'."),
    images: list[Path] = typer.Argument(..., help="PNG/JPEG files, folders of images, .npy (N,28,28) or IDX batches "
                                                  "(the run's own input size where it is not 28x28)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (one object per image in a list)."),
    top: int = typer.Option(3, "--top-k", min=1, help="How many classes to list per image."),
    runs: Optional[Path] = typer.Option(None, "--runs", help=RUNS_HELP),
    which: str = typer.Option("final", "--which", help=WHICH_HELP),
    threads: int = typer.Option(0, "--threads", min=0, help="Torch threads (0: torch's default, all cores)."),
) -> None:
    """Classify images with a trained run (photos/scans of digits are put into MNIST form first; a colour run keeps
    pictures in colour, resized to its input)."""
    import torch

    from convladder.api.tasks import prediction_rows, prediction_text  # one wording for the CLI and Python
    from convladder.serve.predict import Predictor, check_finite, load_run
    from convladder.serve.preprocess import load_inputs

    if threads:
        torch.set_num_threads(threads)  # on a busy machine 1 thread can beat 2 (see docs/serve.md)
    loaded = load_run(run, runs, which)
    batch = load_inputs(images, input_shape=loaded.input_shape)
    start = time.perf_counter()
    probs = Predictor.from_run(loaded).probs(batch.pixels)
    elapsed = time.perf_counter() - start
    check_finite(probs, batch.names, loaded)  # NaN has no label, and NaN is not JSON
    rows = prediction_rows(batch.names, probs, top)
    if as_json:
        typer.echo(json.dumps({"run": loaded.run_id, "images": rows}, indent=1, allow_nan=False))
        return
    typer.echo(prediction_text(rows))
    rate = f", {len(probs) / elapsed:,.0f} images/s" if elapsed > 0 and len(probs) >= 1000 else ""
    typer.echo(f"{len(probs)} image(s), run {loaded.run_id}{loaded.weights_label}{rate}", err=True)


def export_cmd(
    run: str = typer.Argument(..., help="Run id, unique id prefix, or 'latest'."),
    fmt: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    out: Optional[Path] = typer.Option(None, "-o", "--output", help="Output file (default: <run id>.onnx)."),
    runs: Optional[Path] = typer.Option(None, "--runs", help=RUNS_HELP),
    which: str = typer.Option("final", "--which", help=WHICH_HELP),
    check: bool = typer.Option(True, "--check/--no-check", help="Verify against torch (and the test accuracy of the run's data set)."),
    int8: bool = typer.Option(False, "--int8", help="Static int8 quantisation (BN folded first), measured against fp32 on "
                              "the whole test set; the figures are printed and written to export-int8.json in the run folder."),
    calibration: int = typer.Option(1000, "--calibration", help="--int8: training images to calibrate on (never test images)."),
    quant_format: str = typer.Option("qoperator", "--quant-format", help="--int8: qoperator (default) or qdq."),
    threads: int = typer.Option(0, "--threads", min=0, help="--int8: onnxruntime threads for the speed figures (0: its choice)."),
) -> None:
    """Export a run's network to one ONNX file: input float32 pixels in [0,1] (N,1,28,28: the run's input shape),
    output probabilities."""
    if fmt.lower() != "onnx":
        raise UserError(f"--format {fmt} is not supported; use --format onnx")
    if int8:
        return _export_int8(run, out, runs, which, calibration, quant_format, threads)
    from convladder.api.tasks import export  # the Python API's export: one wording for both

    typer.echo(str(export(run, format=fmt, out=out, which=which, check=check, runs=runs)))


def _export_int8(run: str, out: Optional[Path], runs: Optional[Path], which: str, calibration: int,
                 quant_format: str, threads: int) -> None:
    from convladder.serve.export import require_onnx
    from convladder.serve.predict import load_run
    from convladder.serve.quantize import FORMATS, export_int8, report_lines, warning_line

    require_onnx()
    if quant_format not in FORMATS:  # before loading anything
        raise UserError(f"--quant-format {quant_format!r}: use one of {', '.join(FORMATS)}")
    loaded = load_run(run, runs, which)
    report = export_int8(loaded, out or Path(f"{loaded.run_id}.int8.onnx"), calibration=calibration,
                         quant_format=quant_format, threads=threads)
    for line in report_lines(report):
        typer.echo(line)
    if report.loud:  # still written: the numbers say how much it lost
        typer.secho(warning_line(report), fg=typer.colors.RED, bold=True, err=True)


def serve_cmd(
    run: str = typer.Argument(..., help="Run id, unique id prefix, or 'latest'."),
    port: int = typer.Option(8000, "--port", help="Port (0 picks a free one)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; the default is reachable from this machine only."),
    runs: Optional[Path] = typer.Option(None, "--runs", help=RUNS_HELP),
    which: str = typer.Option("final", "--which", help=WHICH_HELP),
    verbose: bool = typer.Option(False, "--verbose", help="Log every request."),
    threads: int = typer.Option(1, "--threads", min=1, help="Torch threads per request (requests run in parallel anyway)."),
    workers: int = typer.Option(64, "--workers", min=1, help="Connections served at once; more clients wait their turn."),
    timeout: float = typer.Option(10.0, "--timeout", min=0.1,
                                  help="Seconds a client may stay silent (mid-request or between requests) before it is disconnected."),
) -> None:
    """Serve a draw-a-digit page and a JSON API (POST /predict) for a run."""
    import torch

    from convladder.serve.predict import load_run, nonfinite_message, nonfinite_weights
    from convladder.serve.server import make_server

    # One image per request: intra-op threads only add hand-off latency (measured 2 ms vs 70 ms on a busy
    # 2-core machine); the threading server runs concurrent requests in parallel instead.
    torch.set_num_threads(threads)
    loaded = load_run(run, runs, which)
    if nonfinite_weights(loaded.model):  # a page whose every answer is an error helps nobody: refuse before listening
        raise UserError(nonfinite_message(loaded, "any image"))
    server = make_server(loaded, host, port, quiet=not verbose, workers=workers, timeout=timeout)
    bound_host, bound_port = server.server_address[:2]
    try:
        if not ipaddress.ip_address(bound_host).is_loopback:
            typer.secho(f"warning: listening on {bound_host}: other machines can reach this page", fg=typer.colors.YELLOW, err=True)
    except ValueError:
        pass
    try:  # the address is printed inside: a signal right after it is still the stop below
        typer.echo(f"run {loaded.run_id}{loaded.weights_label}: open http://{'127.0.0.1' if bound_host in ('0.0.0.0', '') else bound_host}:{bound_port}/  (Ctrl-C stops)")
        server.serve_forever()
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM (a service manager's stop): 130 / 143
        from convladder import interrupts

        typer.echo(f"stopped ({interrupts.what(stop)})")
        raise typer.Exit(interrupts.exit_code(stop))
    finally:
        server.server_close()


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""
    app.command("predict")(predict_cmd)
    app.command("export")(export_cmd)
    app.command("serve")(serve_cmd)
