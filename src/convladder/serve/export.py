"""Export a run's network to one self-contained ONNX file, and check it against torch.

The exported graph takes **float32 pixels in [0, 1], shape (batch, 1, 28, 28)** (MNIST form:
white ink on black, i.e. uint8 / 255; the run's own (C, H, W) where it trained on other images: a colour
run takes (batch, 3, H, W), RGB channels in that order, normalised per channel inside the graph)
and returns **probabilities, shape (batch, classes)**.
The run's normalisation ((x - mean) / std) and the softmax are inside the graph, so a
caller needs nothing from convladder. Input name `pixels`, output name `probs`; the batch
dimension is dynamic.
"""

from __future__ import annotations

import contextlib
import json
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from convladder.data.normalise import Stat, as_stat, channel_tensor, normalise, stat_text, to_unit
from convladder.errors import UserError
from convladder.fileio import atomic_write_bytes, check_space
from convladder.runs.reader import check_output
from convladder.serve.predict import LoadedRun, Predictor, nonfinite_message

INPUT_NAME, OUTPUT_NAME = "pixels", "probs"
TOLERANCE = 1e-4  # max |onnxruntime - torch| per probability
EXTRA_HINT = "pip install 'convladder[export]'"


def require_onnx() -> None:
    """Fail with the install hint when the optional export dependencies are missing."""
    missing = []
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UserError(f"ONNX export needs {', '.join(missing)}: {EXTRA_HINT}")


class ProbsFromPixels(nn.Module):
    """pixels in [0, 1] -> normalise -> network logits -> softmax (what the ONNX file computes)."""

    def __init__(self, model: nn.Module, mean: Stat, std: Stat, input_shape: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        self.net = model
        # a float stays a float (the graph of a grey run is what it always was); per-channel stats become
        # (C, 1, 1) constants of the graph
        self.mean, self.std = channel_tensor(as_stat(mean)), channel_tensor(as_stat(std))
        self.input_shape = tuple(input_shape)  # (C, H, W) of one image: what the export traces with

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = getattr(self.net, "logits", self.net)(normalise(x, self.mean, self.std))
        return torch.softmax(logits.flatten(1), dim=1)


@dataclass
class ExportReport:
    """What `export_onnx` wrote and how it was checked."""

    path: Path
    bytes: int
    images: int  # how many images the outputs were compared on
    source: str  # "mnist test set", "fashion-mnist test set" or "generated images"
    max_abs_diff: float
    onnx_acc: float | None = None  # percent, on the test set of the run's data set
    torch_acc: float | None = None
    run_acc: float | None = None  # what the run recorded
    dataset: str | None = None  # the data set whose test images checked the accuracy


def cached_test_set(dataset: str, input_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    """The test images (N, C, H, W uint8) and labels of the run's data set, if they are in the local cache
    (never downloads) and fit the network's input shape; None otherwise."""
    try:
        from convladder.data.datasets import load_dataset

        splits = load_dataset(dataset, fetch=False)
    except (ImportError, UserError, OSError):
        return None
    x = np.asarray(splits.x_test)
    x = x[:, None] if x.ndim == 3 else x
    if tuple(x.shape[1:]) != tuple(input_shape):
        return None
    return x, np.asarray(splits.y_test)


def _onnx_bytes(wrapper: ProbsFromPixels) -> bytes:
    """Trace to ONNX with the dynamo exporter for (batch, *wrapper.input_shape) inputs, quietly (it logs and
    prints progress)."""
    example = torch.rand(2, *wrapper.input_shape)
    batch = torch.export.Dim("batch", min=1)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},), external_data=False, optimize=True, verbose=False,
            )
    except Exception as exc:  # noqa: BLE001 - exporter failures come in many types; report the layer problem
        raise UserError(f"ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})") from None
    finally:
        quiet.setLevel(level)
    import onnx

    proto = program.model_proto
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise UserError("the exported model would need an external-data file; this exporter writes one file only")
    return proto.SerializeToString()


def _add_metadata(data: bytes, run: LoadedRun) -> bytes:
    import onnx

    proto = onnx.load_from_string(data)
    c, h, w = run.input_shape
    form = ", MNIST form (white ink on black)" if c == 1 else ", RGB" if c == 3 else ""
    meta = {
        "convladder.run": run.run_id,
        "convladder.input": f"float32 pixels in [0,1], (batch,{c},{h},{w}){form}",
        "convladder.output": "class probabilities (batch, classes)",
        "convladder.mean": json.dumps(run.mean),  # a number, or a list per channel
        "convladder.std": json.dumps(run.std),
        "convladder.model_spec": str(run.config.get("model_spec", "")),
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"convladder run {run.run_id}: {meta['convladder.input']} -> {meta['convladder.output']}"
    return proto.SerializeToString()


def ort_session(path_or_bytes: Path | bytes, threads: int = 0):
    """An onnxruntime CPU session; threads=0 lets onnxruntime choose."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    source = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def ort_probs(session, pixels01: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Run the exported model on float32 (N, C, H, W) pixels in [0, 1] (N, 1, 28, 28 for MNIST runs)."""
    outs = [session.run([OUTPUT_NAME], {INPUT_NAME: pixels01[i:i + batch_size]})[0]
            for i in range(0, len(pixels01), batch_size)]
    return np.concatenate(outs)


def verify(data: bytes, run: LoadedRun, path: Path) -> ExportReport:
    """Compare onnxruntime with torch on the test images of the run's data set (or generated ones) and check accuracy."""
    predictor = Predictor.from_run(run)
    # The run's own data set: a fashion-mnist run checked on MNIST digits would print a meaningless accuracy.
    dataset = str(run.config.get("dataset") or "mnist")
    cached = cached_test_set(dataset, tuple(run.input_shape))
    if cached is not None:
        x_u8, labels = cached
        source = f"{dataset} test set"
    else:
        # Without the data set, exercise the graph on varied inputs: noise and blank images both matter.
        rng = np.random.default_rng(0)
        x_u8 = (rng.random((512, *run.input_shape)) ** 3 * 255).astype(np.uint8)
        x_u8[:8] = 0
        labels, source = None, "generated images"
    x01 = to_unit(x_u8).numpy()
    ref = predictor.probs(x_u8)
    if not np.isfinite(ref).all():  # NaN - NaN is NaN, and NaN > TOLERANCE is False: it would pass the check
        raise UserError(nonfinite_message(run, f"the {source}") + f"; not writing {path}")
    got = ort_probs(ort_session(data), x01)
    diff = float(np.abs(got - ref).max())
    report = ExportReport(path, len(data), len(x01), source, diff)
    if not diff <= TOLERANCE:
        raise UserError(f"ONNX and torch disagree by {diff:.2e} (> {TOLERANCE:g}) on the {source}; not writing {path}")
    if labels is not None:
        report.dataset = dataset
        report.onnx_acc = float((got.argmax(1) == labels).mean() * 100)
        report.torch_acc = float((ref.argmax(1) == labels).mean() * 100)
        report.run_acc = run.test_acc  # measured on the same test set
        if report.onnx_acc != report.torch_acc:
            raise UserError(f"ONNX accuracy {report.onnx_acc:.2f}% differs from torch's {report.torch_acc:.2f}%; not writing {path}")
        # The run evaluated with its own pipeline; one image (0.01 %) of slack covers float summation order.
        if report.run_acc is not None and abs(report.onnx_acc - report.run_acc) > 0.011:
            raise UserError(
                f"exported model scores {report.onnx_acc:.2f}% on the {source} but run {run.run_id} recorded "
                f"{report.run_acc:.2f}% — the weights or normalisation (mean {stat_text(run.mean)}, std {stat_text(run.std)}) do not match; not writing {path}")
    return report


def export_onnx(run: LoadedRun, out: Path, *, check: bool = True, int8: bool = False, **int8_options):
    """Write `out` (one file) atomically after verifying it; nothing is written if a check fails.

    int8=True: the statically quantised model instead, measured against fp32 (`serve.quantize.export_int8`, which
    takes `int8_options`: calibration, quant_format, threads, drop_limit) -> its Int8Report."""
    if int8:
        from convladder.serve.quantize import export_int8

        return export_int8(run, out, **int8_options)
    require_onnx()
    # before the work: not into a run folder or onto the index; a folder takes <run id>.onnx; writable
    out = check_output(out, f"{run.run_id}.onnx", run.path.parent)
    # the file holds every weight as float32 (measured: tiny8k's 8.4k parameters give a 45 KB file)
    check_space(out.parent, 4 * sum(p.numel() for p in run.model.state_dict().values()) + 64_000, "the ONNX file")
    wrapper = ProbsFromPixels(run.model, run.mean, run.std, run.input_shape).eval()
    data = _add_metadata(_onnx_bytes(wrapper), run)
    report = verify(data, run, out) if check else ExportReport(out, len(data), 0, "not checked", float("nan"))
    atomic_write_bytes(out, data)
    return report
