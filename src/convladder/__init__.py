"""convladder: design compact CNNs under a parameter budget, one change at a time.

The Python API, every name of `__all__` (imported lazily, so `import convladder` stays fast and loads no torch;
docs/python.md):

    import convladder
    table = convladder.summarize(Net(), (1, 28, 28))                     # the network table + design checks
    convladder.check(Net(), budget="20k")                                 # the design checks alone
    result = convladder.train(Net, epochs=2, model_args={"width": 16})   # a class, instance, spec or name
    run = convladder.load(result)                                         # or an id, 'latest', a run folder
    run.curves(); run.misclassified(16); run.confusion(); run.model(); run.report()
    convladder.runs(tag="ladder:eip4-s2")                                 # stored runs, as `runs list`
    convladder.compare(a, b); convladder.ladder(...); convladder.sweep(...); convladder.frontier(...)
    convladder.doctor(Net); convladder.lr_find("tiny8k"); convladder.predict(run, ["digit.png"])
    convladder.export(run)                                                # a verified ONNX file
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from convladder.analysis.table import NetworkTable
    from convladder.train.result import RunResult

from convladder.version import __version__

__all__ = ["summarize", "check", "train", "runs", "load", "compare", "ladder", "sweep", "frontier", "doctor",
           "lr_find", "predict", "export", "create_model", "Run", "__version__"]

# name -> the module that defines it (convladder/api/: the CLI layer's Python face, docs/ARCHITECTURE.md)
_LAZY = {"runs": "convladder.api.run", "load": "convladder.api.run", "compare": "convladder.api.run",
         "Run": "convladder.api.run", "check": "convladder.api.tasks", "ladder": "convladder.api.tasks",
         "sweep": "convladder.api.tasks", "frontier": "convladder.api.tasks", "doctor": "convladder.api.tasks",
         "lr_find": "convladder.api.tasks", "predict": "convladder.api.tasks", "export": "convladder.api.tasks"}
# API names that are also subpackages (convladder/runs/, ladder/, doctor/): Python sets a subpackage as an
# attribute of its parent when it is imported, so the package itself is made callable (as convladder.train is):
# `convladder.runs(...)` calls the API function, `import convladder.runs.store` still imports the module.
_PACKAGES = ("runs", "ladder", "doctor")


def __getattr__(name: str) -> Any:
    import importlib

    # `convladder.train` is the train package, made callable (see convladder/train/__init__.py): importing
    # it here, lazily, keeps `import convladder` fast and leaves one object under that name.
    if name == "train" or name in _PACKAGES:
        return importlib.import_module(f"convladder.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _CallablePackage(types.ModuleType):
    """A subpackage that is also an API function: calling it calls `convladder.api...<its name>`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _api_function(self.__name__)(*args, **kwargs)

    @property
    def __signature__(self) -> Any:  # inspect.signature(convladder.runs) shows the function's parameters
        import inspect

        return inspect.signature(_api_function(self.__name__))


def _api_function(module_name: str) -> Any:
    import importlib

    name = module_name.rsplit(".", 1)[-1]
    return getattr(importlib.import_module(_LAZY[name]), name)


class _Root(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # the import system stores each imported subpackage here: the API's ones become callable on the way
        if name in _PACKAGES and isinstance(value, types.ModuleType) and type(value) is types.ModuleType:
            value.__class__ = _CallablePackage
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Root


def _train(model_or_spec: Any = "frontier15k", /, *, runs: str | Path | bool | None = None, quiet: bool = False,
          progress: Any = None, data: Any = None, resume: str | None = None,
          tensorboard: str | Path | None = None, mlflow: str | None = None,
          **config_keys: Any) -> RunResult | list[RunResult]:
    """convladder.train(...): train a network and return its RunResult (a list of them when seeds > 1).

    model_or_spec: a registered name, spec text or file, a NetworkSpec, `path/to/file.py:ClassName` (imports and
    runs that file), an nn.Module class (constructed with `model_args` and the run's seed, once per seed) or an
    nn.Module instance (trained in place, with its own initial weights; one seed).
    config_keys: any TrainConfig key, e.g. epochs=2, dataset="synthetic", lr=0.05, model_args={"width": 16}.
    runs: the run store folder (default $CONVLADDER_RUNS or ./runs); runs=False trains without writing a run.
    resume: continue that interrupted run (give the same class or instance it trained).
    tensorboard, mlflow: also write the finished runs there (as `convladder train --tensorboard DIR --mlflow URI`).
    """
    import contextlib

    from torch import nn

    from convladder.errors import UserError
    from convladder.train.config import TrainConfig, field_names, unknown_keys_message
    from convladder.train.loop import resume as resume_run
    from convladder.train.loop import train as train_one
    from convladder.train.loop import train_seeds
    from convladder.train.models import handing_over
    from convladder.train.progress import Progress, resolve_progress
    from convladder.train.result import SeedResults
    from convladder.runs.store import RunStore

    if "model" in config_keys:
        raise UserError("give the network as the first argument of convladder.train, not as model=")
    unknown = set(config_keys) - set(field_names())
    if unknown:  # the keywords of this function count too: runs_root= is runs=, not a config key
        raise UserError(unknown_keys_message(unknown, field_names() + list(_TRAIN_KEYWORDS),
                                             "keyword of convladder.train"))
    obj = model_or_spec
    python_object = isinstance(obj, nn.Module) or (isinstance(obj, type) and issubclass(obj, nn.Module))
    if isinstance(obj, nn.Module) and int(config_keys.get("seeds", 1)) > 1:
        raise UserError("an instance trains in place, so it gives one seed: pass the class to train several seeds "
                        "(each seed builds a fresh model)")
    if not python_object and not isinstance(obj, str):
        from convladder.spec.layers import NetworkSpec
        from convladder.spec.notation import format_spec

        if not isinstance(obj, NetworkSpec):
            raise UserError(f"convladder.train takes a name, spec text, NetworkSpec, file.py:ClassName or an "
                            f"nn.Module class/instance, not a {type(obj).__name__}")
        obj = format_spec(obj)
    store = None if runs is False else RunStore(None if runs in (None, True) else runs)
    if tensorboard or mlflow:
        from convladder.report.exporters import require

        if store is None:
            raise UserError("tensorboard= and mlflow= write a stored run: leave runs=False out")
        require(tensorboard, mlflow)  # a missing extra is said before training, not after it
    progress = Progress() if quiet else resolve_progress(progress)
    with handing_over(obj) if python_object else contextlib.nullcontext(obj) as model:
        if resume is not None:
            if store is None:
                raise UserError("resume needs the run store: leave runs=False out")
            done: Any = _located(resume_run(resume, store, progress, data=data), store)
        else:
            config = TrainConfig.from_dict({**config_keys, "model": model})
            if config.seeds > 1:
                done = SeedResults([_located(r, store) for r in train_seeds(config, store, progress, data=data)[0]])
            else:
                done = _located(train_one(config, store, progress, data=data), store)
        if tensorboard or mlflow:  # inside: a class from a notebook is still reachable for the network table
            _export(done, store, tensorboard, mlflow, quiet)
    return done


_TRAIN_KEYWORDS = ("runs", "quiet", "progress", "data", "resume", "tensorboard", "mlflow")  # beside config keys


def _export(done: Any, store: Any, tensorboard: str | Path | None, mlflow: str | None, quiet: bool) -> None:
    """The finished runs, read back from the store, to TensorBoard/MLflow (convladder.report.exporters)."""
    from convladder.report.exporters import export_runs
    from convladder.report.rundata import load_run

    results = list(done) if hasattr(done, "results") else [done]
    folders = [store.root / r.run_id for r in results if r.run_id]
    for line in export_runs([load_run(f) for f in folders], tensorboard, mlflow):
        if not quiet:
            print(line)


def _located(result: Any, store: Any) -> Any:
    """Tell the result where its run folder is, so result.report() finds runs kept outside the default store."""
    if store is not None and getattr(result, "run_id", None):
        result.run_dir = str(store.run_path(result.run_id))
    return result


def create_model(target: Any, /, **kwargs: Any) -> Any:
    """A network from a name, spec, `file.py:ClassName`, nn.Module class/instance, or a run id (with its weights).

    See `convladder.train.models.create_model` for the keywords (model=, args=, input_shape=, seed=, which=, ...).
    """
    from convladder.train.models import create_model as _create

    return _create(target, **kwargs)


def summarize(model_or_spec: Any, input_shape: tuple[int, ...] | None = None, *,
              args: dict[str, Any] | None = None, classes: int = 10, budget: int | None = None,
              checks: bool = True) -> NetworkTable:
    """The network table of a spec/name, an nn.Module instance or class, or `file.py:ClassName` (`args`: its arguments).

    The same verdict as `convladder summary`/`check`: the network must return one score vector per image (a
    UserError says how to end forward otherwise), and the design checks (`classes`, `budget`, the notes' rules)
    show with the table in Jupyter and as text; checks=False leaves them out. input_shape is (C, H, W); torchinfo's
    (1, C, H, W) is read as one image, with a note.
    """
    from torch import nn

    from convladder.analysis.table import DEFAULT_INPUT, image_shape, network_verdict
    from convladder.spec.own import is_own_ref

    shape = image_shape(input_shape)[0] if input_shape is not None else None
    verdict = {"classes": classes, "budget": budget, "checks": checks}
    if isinstance(model_or_spec, nn.Module):
        return network_verdict(model_or_spec, input_shape, **verdict)
    if (isinstance(model_or_spec, type) and issubclass(model_or_spec, nn.Module)) or is_own_ref(model_or_spec):
        model = create_model(model_or_spec, args=args, input_shape=shape or DEFAULT_INPUT)
        where = model_or_spec.__name__ if isinstance(model_or_spec, type) else str(model_or_spec)
        return network_verdict(model, input_shape, where=where, **verdict)
    if args:
        from convladder.errors import UserError

        raise UserError("args= are the constructor arguments of your own class (an nn.Module class or "
                        "path/to/file.py:ClassName), not of a spec — leave args out")
    if isinstance(model_or_spec, str):
        from convladder.spec.registry import resolve_spec

        return network_verdict(resolve_spec(model_or_spec, shape), input_shape, **verdict)
    return network_verdict(model_or_spec, input_shape, **verdict)


def _report_of_run(folder: Path, out: str | Path | None = None, *, model: Any = None) -> Any:
    """What `result.report()` calls: the run's HTML report (report/, with torch and matplotlib: loaded on first use)."""
    from convladder.report.runreport import report_of_run

    return report_of_run(folder, out, model=model)


# train/ never imports report/ (docs/ARCHITECTURE.md); the root package, which may import any area, hands
# RunResult.report its report maker. train/result.py and the train package load no torch.
from convladder.train import result as _result  # noqa: E402 - after the package above is set up

_result.set_report_maker(_report_of_run)
