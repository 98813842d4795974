"""Stored runs in Python: `convladder.runs(...)`, `convladder.load(run)` -> Run, `convladder.compare(...)`.

A Run reads its folder through the run store (the same reader as `runs show`, `report`, `predict`); its network
comes back through the one `create_model`, its figures are the report's. Text is the CLI's (`runs list`,
`runs show`, `runs compare`), HTML in Jupyter.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from convladder.api.display import E, FigureView, ListShown, Shown, table_html
from convladder.errors import UserError

if TYPE_CHECKING:
    from torch import nn

    from convladder.runs.store import RunRecord, RunStore
    from convladder.report.runreport import RunReport
    from convladder.train.result import RunResult


class Run:
    """One stored run: `.config`, `.metrics`, `.result`, `.env` (its files), `.curves()`, `.misclassified(n)`,
    `.confusion()`, `.model()` (trained weights loaded), `.report()`, `.handin()` (Markdown), `.to_tensorboard(dir)`,
    `.to_mlflow(uri)`. `model=`: the class it trained, for a class
    convladder cannot rebuild alone (defined in a notebook whose source was not recorded)."""

    def __init__(self, store: RunStore, record: RunRecord, model: Any = None):
        self.store, self.record, self.id = store, record, record.id
        self.path = store.root / record.id
        self._model_class = model
        self._data: Any = None

    @property
    def config(self) -> dict[str, Any]:
        """config.json (the resolved training config; UserError when missing or damaged)."""
        return self.store.read_config(self.id)

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl: one dict per epoch (accuracies in %)."""
        return self.store.read_metrics(self.id)

    @property
    def env(self) -> dict[str, Any]:
        return self.store.read_env(self.id)

    @property
    def result(self) -> RunResult | None:
        """result.json as a RunResult (final vs best epoch, gap, potential, verdict); None while it runs."""
        from convladder.train.result import RunResult

        try:
            data = self.store.read_result(self.id)
        except UserError:
            return None
        result = RunResult.from_dict(data)
        result.run_dir = str(self.path)
        return result

    def model(self, which: str = "final", model: Any = None) -> nn.Module:
        """The trained network (eval mode): final or best weights, rebuilt as the run's spec or own class."""
        from convladder.train.models import create_model

        return create_model(self.path, model=model or self._model_class, which=which)

    def _run_data(self) -> Any:
        """The report's reading of the folder, with the networks handed over when the class was given."""
        if self._data is None:
            from convladder.report.rundata import load_run

            self._data = load_run(self.path)
            if self._model_class is not None:
                for which, name in (("final", "model.safetensors"), ("best", "best.safetensors")):
                    if (self.path / name).is_file():
                        self._data._models[which] = self.model(which)
        return self._data

    def curves(self) -> FigureView:
        """Accuracy, loss and learning rate per epoch (the report's figure)."""
        from convladder.report.figures import curves

        return FigureView(curves(self._run_data()))

    def _predicted(self, which: str) -> tuple[Any, Any, Any]:
        from convladder.report.figures import load_test_data, predict

        data = self._run_data()
        test = load_test_data(data)
        if test is None:
            raise UserError(f"run {self.id}: {data.notes[-1]}")
        data._models.setdefault(which, self.model(which))
        return (test, *predict(data._models[which], test))

    def misclassified(self, n: int = 32, which: str = "final") -> FigureView:
        """The n most confident mistakes on the run's test set: true -> predicted and its probability."""
        from convladder.report.figures import misclassified

        return FigureView(misclassified(*self._predicted(which), n=n))

    def confusion(self, which: str = "final") -> FigureView:
        """The confusion matrix of the test set (rows: true class, columns: predicted)."""
        from convladder.report.figures import confusion

        test, predicted, _ = self._predicted(which)
        return FigureView(confusion(test, predicted))

    def report(self, out: str | Path | None = None, model: Any = None) -> RunReport:
        """The run's HTML report (what `convladder report RUN` writes), inline in Jupyter; `out` also writes it."""
        from convladder.report.runreport import RunReport

        return RunReport.of_run(self.path, out, model=model or self._model_class)

    def handin(self, out: str | Path | None = None) -> Shown:
        """The Markdown hand-in of the run (`convladder report RUN --markdown`): README.md with its figures as
        PNG files beside it, in `out` (a folder, default handin-<run id>, or a .md file); shows the Markdown."""
        from convladder.report.markdown import handin_path, write_handin

        readme = handin_path(out, self.id, [self.store.root])  # checked before the work, as the command's -o
        path = write_handin(str(self.path), readme, self.store.root)
        return Shown(path.read_text(), path, title=f"hand-in written to {path}")

    def to_tensorboard(self, logdir: str | Path) -> Path:
        """Write the run to TensorBoard under `logdir` (as `convladder runs export --tensorboard`); its folder."""
        from convladder.report.exporters import write_tensorboard

        return write_tensorboard(self._run_data(), logdir)

    def to_mlflow(self, uri: str, experiment: str | None = None) -> str:
        """Log the run to an MLflow tracking store (as `runs export --mlflow`); the MLflow run id."""
        from convladder.report.exporters import mlflow_client, write_mlflow

        return write_mlflow(self._run_data(), mlflow_client(uri), experiment)

    def _result_data(self) -> dict[str, Any] | None:
        try:
            return self.store.read_result(self.id)
        except UserError:
            return None

    def __str__(self) -> str:
        from convladder.runs.commands import show_text

        return show_text(self.record, self.path, self.config, self.metrics, self._result_data())

    __repr__ = __str__

    def _repr_html_(self) -> str:
        result = self.result
        head = result._repr_html_() if result is not None else f"<b>run {E(self.id)}: {E(self.record.status)}</b>"
        keys = ("epoch", "lr", "train_loss", "train_acc", "val_acc", "test_loss", "test_acc")
        rows = [[_cell(m.get(k)) for k in keys] for m in self.metrics]
        return (f"<div>{head}{table_html(['epoch', 'lr', 'train loss', 'train acc*', 'val acc', 'test loss', 'test acc'], rows, set(range(7)))}"
                "<small>* train accuracy as seen while training (dropout/augmentation on); accuracies in %</small></div>")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"
    return "-" if value is None else str(value)


def _store(runs: str | Path | None) -> RunStore:
    from convladder.runs.store import RunStore

    return RunStore(runs)


def store_of(objects: tuple[Any, ...] | list[Any], runs: str | Path | None) -> str | Path | None:
    """`runs`, else the store the given training results or Runs live in (when they share one), else None:
    the default store."""
    if runs is not None:
        return runs
    roots = {Path(o.run_dir).parent if getattr(o, "run_dir", None) else o.store.root
             for o in objects if getattr(o, "run_dir", None) or isinstance(o, Run)}
    return roots.pop() if len(roots) == 1 else None


def ref_of(obj: Any) -> str:
    """A run's id from a Run, a training result, or the id/prefix/'latest' text itself."""
    if isinstance(obj, Run):
        return obj.id
    return str(getattr(obj, "run_id", None) or obj)


def load(run: Any = "latest", *, runs: str | Path | None = None, model: Any = None) -> Run:
    """A stored run: its id, a unique prefix, 'latest', 'latest:<model, name or tag>', its folder, or what
    `convladder.train` returned. runs: the run store (default $CONVLADDER_RUNS or ./runs)."""
    from convladder.runs.store import RunStore

    if hasattr(run, "results") and hasattr(run, "median"):  # SeedResults: one run per seed
        raise UserError(f"that result holds {len(run)} runs, one per seed — load one: convladder.load(results.median) "
                        "or convladder.load(results[0]); convladder.compare(results) shows them side by side")
    if isinstance(run, Run):
        return run
    folder = getattr(run, "run_dir", None) or (run if isinstance(run, Path) else None)
    if folder is None and isinstance(run, str) and (Path(run).expanduser() / "config.json").is_file():
        folder = run
    if folder is not None:  # a run folder: its store is the folder above it
        folder = Path(folder).expanduser().resolve()
        store = RunStore(folder.parent)
        return Run(store, store.get(folder.name), model)
    ref = getattr(run, "run_id", run)
    if not isinstance(ref, str):
        raise UserError(f"convladder.load takes a run id, prefix, 'latest', a run folder or a training result, "
                        f"not a {type(run).__name__}")
    store = _store(runs)
    return Run(store, store.get(ref), model)


def runs(*, status: str | None = None, model: str | None = None, tag: str | None = None, limit: int = 50,
         runs: str | Path | None = None) -> ListShown:
    """The stored runs, newest first, filtered like `convladder runs list` (status, model, tag; limit 0 = all):
    a list of Run, shown as that command's table."""
    from convladder.runs.commands import list_text

    store = _store(runs)
    filters = {k: v for k, v in {"status": status, "model": model}.items() if v}
    records = store.list_runs(limit=limit or None, tag=tag, **filters)
    header = ["id", "status", "model", "seed", "params", "final test %", "best val %", "best ep", "name"]
    rows = [[r.id, r.status, r.model if r.model is None or len(r.model) <= 40 else r.model[:37] + "...", r.seed,
             r.params, _cell(r.final_test_acc), _cell(r.best_val_acc), r.best_epoch, r.name] for r in records]
    return ListShown([Run(store, r) for r in records], lambda: list_text(store, records),
                     lambda: table_html(header, rows, {3, 4, 5, 6, 7}) if rows else "<p>no runs</p>")


def compare(*run_refs: Any, runs: str | Path | None = None) -> Shown:
    """Runs side by side, as `convladder runs compare`: results, then the config keys that differ. A result of
    several seeds counts as its runs."""
    from convladder.runs.commands import compare_text

    run_refs = tuple(r for ref in run_refs for r in (ref.results if hasattr(ref, "median") else [ref]))
    return Shown(compare_text(_store(store_of(run_refs, runs)), [ref_of(r) for r in run_refs]), title="runs compared")
