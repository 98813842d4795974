"""int8 export: a run's network with BatchNorm folded, statically quantised by onnxruntime, measured against fp32.

Steps (`export_int8`):

1. the fp32 graph of `serve.export` (pixels in [0, 1] -> probabilities), built from `serve.fuse.inference_logits`:
   every BatchNorm that folds exactly into a convolution is folded first (a spec's network); every BatchNorm2d
   left (before a padded convolution, or in an own class) becomes the same affine map as a 1x1 depthwise
   convolution (`bn_as_conv`), which onnxruntime quantises — a BatchNormalization node would stay fp32 between
   a dequantise and a quantise. The count of each is recorded;
2. `onnxruntime.quantization.quant_pre_process` (shape inference, graph optimisation), then `quantize_static`:
   int8 weights per output channel (symmetric), uint8 activations with ranges from MinMax calibration on
   **training images** of the run's data set (its training split: never the validation or test images), a fixed
   seeded sample; the softmax stays fp32 (quantised probabilities would tie and change the argmax);
3. fp32 and int8 accuracy on the whole test set of the run's data set, the drop in points, the two file sizes and
   images/s of each (onnxruntime, CPU, the same threads and batch), printed and written as `export-int8.json` in
   the run folder. A drop above `DROP_LIMIT` is reported loudly; the file is still written.

QOperator (QLinearConv ...) is the default format: on the 2-core box it ran faster than QDQ at the same accuracy
(bench/results/int8.md).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from convladder.data.normalise import to_unit
from convladder.errors import UserError
from convladder.fileio import atomic_write_bytes
from convladder.runs.reader import check_output
from convladder.serve.export import (INPUT_NAME, ProbsFromPixels, _add_metadata, _onnx_bytes, ort_probs, ort_session,
                                     require_onnx, verify)
from convladder.serve.fuse import _affine, inference_logits
from convladder.serve.predict import LoadedRun

FORMATS = ("qoperator", "qdq")
DEFAULT_FORMAT = "qoperator"
DEFAULT_CALIBRATION = 1000  # training images; bench/results/int8.md compares 200 and 1000
DROP_LIMIT = 0.3  # accuracy points: a larger drop is reported loudly
RECORD = "export-int8.json"  # written beside the run's other files
TIMING_BATCH = 500
# Quantised: the layers that carry the work. Softmax is left fp32 on purpose (see the module doc).
QUANTISED_OPS = ["Conv", "MatMul", "Gemm", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "Clip", "Add",
                 "Mul", "Concat", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze"]


@dataclass
class Int8Report:
    """What `export_int8` wrote and measured (accuracies in percent, on `test_images` images)."""

    path: str
    run: str
    dataset: str
    test_images: int
    fp32_acc: float
    int8_acc: float
    drop: float  # fp32_acc - int8_acc, points
    drop_limit: float
    fp32_bytes: int
    int8_bytes: int
    fp32_images_per_s: float
    int8_images_per_s: float
    quant_format: str
    calibration_images: int
    calibration_source: str
    threads: int  # onnxruntime intra-op threads (0: onnxruntime's choice)
    timing_batch: int
    record: str  # the JSON file in the run folder that holds this report
    bn_folded: int = 0  # BatchNorm layers folded into a convolution
    bn_as_conv: int = 0  # BatchNorm layers written as a 1x1 depthwise convolution
    bn_left: int = 0  # BatchNormalization nodes left in the fp32 graph (functional F.batch_norm calls)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def loud(self) -> bool:
        return self.drop > self.drop_limit

    def to_dict(self) -> dict:
        return {**asdict(self), "drop_over_limit": self.loud}


@dataclass
class Images:
    """uint8 (N, C, H, W) images and their labels."""

    x: np.ndarray
    y: np.ndarray


def run_data(run: LoadedRun) -> tuple[Images, Images, str]:
    """(calibration pool: the run's training split, test set, data set name) from the local cache (never downloads)."""
    from convladder.data.datasets import load_dataset
    from convladder.train.config import TrainConfig, val_images
    from convladder.train.device_data import split_indices, synthetic_splits

    name = str(run.config.get("dataset") or "mnist")
    try:
        splits = synthetic_splits() if name == "synthetic" else load_dataset(name, fetch=False)
    except (UserError, OSError) as exc:
        raise UserError(f"int8 export calibrates on {name}'s training images and measures on its test set, which are "
                        f"not in the local cache ({str(exc).splitlines()[0][:160]}) — run `convladder data fetch {name}`"
                        ) from None
    chw = lambda a: a[:, None] if a.ndim == 3 else a  # noqa: E731 - grey sets are stored (N, H, W)
    x_train, y_train = chw(np.asarray(splits.x_train)), np.asarray(splits.y_train)
    x_test, y_test = chw(np.asarray(splits.x_test)), np.asarray(splits.y_test)
    if tuple(x_test.shape[1:]) != tuple(run.input_shape):
        raise UserError(f"{name}'s images are {x_test.shape[1:]} but run {run.run_id} takes {tuple(run.input_shape)} "
                        "— int8 export needs the data set the run trained on")
    # the trainer's split: the same subset, validation size and split seed, so calibration never sees val images
    subset = int(run.config.get("subset") or 0)
    n = min(subset, len(x_train)) if subset else len(x_train)
    val = val_images(TrainConfig(subset=subset, val_size=int(run.config.get("val_size") or 0)))
    train_idx = split_indices(n, val, int(run.config.get("split_seed") or 0))[0].numpy() if val else np.arange(n)
    return Images(x_train[train_idx], y_train[train_idx]), Images(x_test, y_test), name


def bn_as_conv(model: nn.Module) -> tuple[nn.Module, int]:
    """(a copy of `model` with every BatchNorm2d replaced by the same per-channel affine map as a 1x1 depthwise
    convolution, how many were replaced); exact in fp32 (eval-mode statistics)."""
    model = copy.deepcopy(model).eval()
    replaced = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.BatchNorm2d) and module.running_var is not None:
            scale, shift = _affine(module)
            conv = nn.Conv2d(module.num_features, module.num_features, 1, groups=module.num_features)
            with torch.no_grad():
                conv.weight.copy_(scale.view(-1, 1, 1, 1))
                conv.bias.copy_(shift)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, conv.eval())
            replaced += 1
    return model, replaced


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def fp32_graph(run: LoadedRun) -> tuple[bytes, int, int, int]:
    """(the fp32 ONNX model int8 export quantises, BatchNorms folded, made 1x1 convolutions, left as nodes)."""
    fused = inference_logits(run.model)
    folded = _batchnorms(run.model) - _batchnorms(fused)
    net, as_conv = bn_as_conv(fused)
    fp32 = _add_metadata(_onnx_bytes(ProbsFromPixels(net, run.mean, run.std, run.input_shape).eval()), run)
    return fp32, folded, as_conv, _onnx_ops(fp32).count("BatchNormalization")


def calibration_sample(pool: Images, count: int, seed: int = 0) -> np.ndarray:
    """`count` training images drawn without replacement (seeded), as float32 pixels in [0, 1]."""
    if count < 1:
        raise UserError(f"--calibration {count}: give at least 1 training image (e.g. {DEFAULT_CALIBRATION})")
    pick = np.sort(np.random.default_rng(seed).choice(len(pool.x), min(count, len(pool.x)), replace=False))
    return to_unit(pool.x[pick]).numpy()


def quantize_onnx(fp32: bytes, calibration01: np.ndarray, quant_format: str = DEFAULT_FORMAT) -> bytes:
    """Static int8 quantisation of an fp32 ONNX model: per-channel int8 weights, uint8 activations (MinMax)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if quant_format not in FORMATS:
        raise UserError(f"--quant-format {quant_format!r}: use one of {', '.join(FORMATS)}")

    class Batches(CalibrationDataReader):
        """The calibration images in batches of 100 (onnxruntime asks for one feed at a time)."""

        def __init__(self, x01: np.ndarray, batch: int = 100):
            self.feeds = iter([{INPUT_NAME: x01[i:i + batch]} for i in range(0, len(x01), batch)])

        def get_next(self):
            return next(self.feeds, None)

    reader = Batches(calibration01)
    with tempfile.TemporaryDirectory(prefix="convladder-int8-") as tmp:
        src, pre, out = (Path(tmp) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(fp32)
        try:
            quant_pre_process(str(src), str(pre))
            quantize_static(str(pre), str(out), reader,
                            quant_format=QuantFormat.QOperator if quant_format == "qoperator" else QuantFormat.QDQ,
                            per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                            op_types_to_quantize=QUANTISED_OPS)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types; one line says which step failed
            raise UserError(f"int8 quantisation failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}) "
                            "— export without --int8 still works") from None
        return out.read_bytes()


def measure(data: bytes, test: Images, threads: int = 0, repeats: int = 3) -> tuple[float, float, np.ndarray]:
    """(accuracy %, images/s, probabilities) of an ONNX model on the test set; the rate is the best of `repeats`
    timed passes over the whole set in batches of TIMING_BATCH (after one pass that also warms up)."""
    session = ort_session(data, threads)
    x01 = to_unit(test.x).numpy()
    probs = ort_probs(session, x01, TIMING_BATCH)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        ort_probs(session, x01, TIMING_BATCH)
        best = min(best, time.perf_counter() - start)
    return float((probs.argmax(1) == test.y).mean() * 100), len(x01) / best, probs


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    from convladder.train.runenv import cpu_model

    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "cpu": cpu_model(), "cores": str(os.cpu_count())}


def _onnx_ops(data: bytes) -> list[str]:
    import onnx

    return [node.op_type for node in onnx.load_from_string(data).graph.node]


def _with_note(data: bytes, items: dict[str, str]) -> bytes:
    import onnx

    proto = onnx.load_from_string(data)
    for key, value in items.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def export_int8(run: LoadedRun, out: Path, *, calibration: int = DEFAULT_CALIBRATION,
                quant_format: str = DEFAULT_FORMAT, threads: int = 0, drop_limit: float | None = None) -> Int8Report:
    """Write the int8 model to `out` and `export-int8.json` in the run folder (both atomically); see the module doc."""
    require_onnx()
    drop_limit = DROP_LIMIT if drop_limit is None else drop_limit
    if quant_format not in FORMATS or calibration < 1:  # bad options: said before any work
        raise UserError(f"int8 export takes quant_format {' or '.join(FORMATS)} (not {quant_format!r}) and at least 1 "
                        f"calibration image (not {calibration})")
    out = check_output(out, f"{run.run_id}.int8.onnx", run.path.parent)
    pool, test, dataset = run_data(run)
    cal01 = calibration_sample(pool, calibration)
    fp32, folded, as_conv, bn_left = fp32_graph(run)
    verify(fp32, run, out)  # the fused fp32 graph agrees with torch (and, on the cached test set, with the run)
    int8 = _with_note(quantize_onnx(fp32, cal01, quant_format), {
        "convladder.int8": f"static {quant_format}, per-channel int8 weights, uint8 activations, MinMax calibration "
                           f"on {len(cal01)} {dataset} training images"})
    fp32_acc, fp32_rate, _ = measure(fp32, test, threads)
    int8_acc, int8_rate, probs = measure(int8, test, threads)
    if not np.isfinite(probs).all():
        raise UserError(f"the int8 model of run {run.run_id} gives NaN/infinite probabilities; not writing {out}")
    report = Int8Report(str(out), run.run_id, dataset, len(test.x), fp32_acc, int8_acc, fp32_acc - int8_acc,
                        drop_limit, len(fp32), len(int8), fp32_rate, int8_rate, quant_format, len(cal01),
                        f"{dataset} training split (seeded sample; no validation or test image)", threads,
                        TIMING_BATCH, str(run.path / RECORD), folded, as_conv, bn_left, versions())
    atomic_write_bytes(out, int8)
    try:
        atomic_write_bytes(run.path / RECORD, (json.dumps(report.to_dict(), indent=2) + "\n").encode())
    except OSError as exc:  # a read-only store: the figures are still printed, and said not to be recorded
        report.record = f"nowhere: {run.path} cannot be written ({exc.strerror or type(exc).__name__})"
    return report


def warning_line(report: Int8Report) -> str | None:
    """The loud line for a drop over the limit (the file is written all the same), or None."""
    if not report.loud:
        return None
    return (f"WARNING: int8 loses {report.drop:.2f} accuracy points (more than {report.drop_limit:g}) on the "
            f"{report.dataset} test set; the file was written — try more calibration images or the other format")


def report_lines(report: Int8Report) -> list[str]:
    """What `export --int8` prints: accuracy, drop, sizes, speed (the loud line is added by the caller)."""
    return [
        f"wrote {report.path} (int8, {report.quant_format}, {report.int8_bytes / 1024:.1f} KiB; the fp32 graph it "
        f"came from: {report.fp32_bytes / 1024:.1f} KiB)",
        f"BatchNorm: {report.bn_folded} folded into convolutions, {report.bn_as_conv} as 1x1 depthwise convolutions"
        + (f", {report.bn_left} left as fp32 BatchNormalization (functional calls)" if report.bn_left else ""),
        f"calibration: {report.calibration_images} images of the {report.calibration_source}",
        f"{report.dataset} test accuracy on all {report.test_images:,} test images: fp32 {report.fp32_acc:.2f}%, "
        f"int8 {report.int8_acc:.2f}% (drop {report.drop:+.2f} points; limit {report.drop_limit:g})",
        f"onnxruntime CPU, batch {report.timing_batch}, threads {report.threads or 'auto'}: fp32 "
        f"{report.fp32_images_per_s:,.0f} images/s, int8 {report.int8_images_per_s:,.0f} images/s (best of 3 passes)",
        f"recorded in {report.record}",
    ]
