"""Reading run folders for the report, defensively.

The report must describe whatever is on disk: a finished run, one that is still
writing, one from an older version with fewer fields, or one whose files were
damaged. So every file is read here with its own error handling, and anything
missing or unreadable becomes a human-readable note instead of an exception.
Only a target that names no run at all is a `UserError`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from convladder.errors import UserError
from convladder.ladder.compare import output_classes  # a run records no class count: its network's output says it
from convladder.runs.reader import RUN_FILES, read_json, read_metrics
from convladder.runs.store import RUN_ID, RunStore

_read_json = read_json  # the tolerant reader, noting mode: problems become notes, never exceptions
_read_metrics = read_metrics


@dataclass
class RunData:
    """Everything the report needs from one run folder; `notes` says what is missing."""

    id: str
    path: Path
    config: dict[str, Any]
    env: dict[str, Any]
    metrics: list[dict[str, Any]]
    result: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    _models: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        c = self.config
        model = c.get("model")
        # a spec typed on the command line is long text: name the run by its id instead
        model = model if isinstance(model, str) and len(model) <= 40 else None
        if c.get("ladder") is not None and c.get("step") is not None:  # by the ladder file's step name, never a path
            return f"step {c['step']}: {c.get('step_name') or self.id}"
        return str(c.get("name") or model or f"run {self.id}")

    @property
    def tags(self) -> list[str]:
        return [t for t in self.config.get("tags") or [] if isinstance(t, str)]

    @property
    def seed(self) -> Any:
        return self.config.get("seed", self.result.get("seed"))

    @property
    def status(self) -> str:
        """result.json's status; a run without one is still running or was killed: 'incomplete'."""
        status = self.result.get("status")
        return status if isinstance(status, str) and status else "incomplete"

    @property
    def own(self) -> bool:
        """Whether the run trained a person's own class (it then has own_model.json)."""
        return (self.path / "own_model.json").is_file()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        shape = self.env.get("input_shape") or [1, 28, 28]
        return tuple(int(v) for v in shape)  # type: ignore[return-value]

    def spec(self) -> Any | None:
        """The NetworkSpec rebuilt from config.json, or None (with a note)."""
        if "spec" in self._models:
            return self._models["spec"]
        spec = None
        text = self.config.get("model_spec") or self.config.get("model")
        if self.own:
            pass  # an own class: no spec; model() and table() rebuild it from the run's record
        elif not text:
            self.notes.append("config.json has no model_spec: no network table or weight figures")
        else:
            try:
                from convladder.spec.registry import resolve_spec

                spec = resolve_spec(str(text), input_shape=self.input_shape)
            except Exception as exc:  # noqa: BLE001 - any spec problem becomes a note, never a crash
                self.notes.append(f"the network in config.json cannot be rebuilt ({exc})")
        self._models["spec"] = spec
        return spec

    def model(self, which: str = "final") -> torch.nn.Module | None:
        """The trained network in eval mode, or None (with a note) when weights are missing or do not fit."""
        if which in self._models:
            return self._models[which]
        model = None
        fname = "model.safetensors" if which == "final" else "best.safetensors"
        wpath = self.path / fname
        spec = self.spec()
        if not wpath.is_file():
            self.notes.append(f"{fname} is missing: no figures that need trained weights")
        elif self.own or spec is not None:
            try:  # the one way a run's network is rebuilt (spec or own class), weights loaded, eval mode
                from convladder.runs.reader import source_status
                from convladder.train.models import model_from_folder

                changed = source_status(self.path) if self.own else None
                if changed:
                    self.notes.append(changed)
                model = model_from_folder(self.path, which)
            except Exception as exc:  # noqa: BLE001 - a damaged file or a failing own class: a note, not a crash
                what = "the own model cannot be rebuilt" if self.own else f"{fname} cannot be loaded into the network"
                # a UserError is one line that ends in what to do: kept whole; anything else cut
                text = str(exc) if isinstance(exc, UserError) else str(exc)[:300]
                self.notes.append(f"{what} ({type(exc).__name__}: {text})")
        self._models[which] = model
        return model

    def table(self) -> Any | None:
        """The network table (from the spec; no weights needed), or None."""
        if "table" in self._models:
            return self._models["table"]
        table = None
        spec = self.spec()
        if self.own:
            model = self.model("final")
            if model is not None:
                try:
                    from convladder.analysis.table import summarize

                    table = summarize(model, self.input_shape)
                except Exception as exc:  # noqa: BLE001
                    self.notes.append(f"network table failed ({exc})")
        elif spec is not None:
            try:
                from convladder.analysis.table import summarize

                table = summarize(spec, self.input_shape)
            except Exception as exc:  # noqa: BLE001
                self.notes.append(f"network table failed ({exc})")
        self._models["table"] = table
        return table


def load_run(path: Path) -> RunData:
    """Read one run folder; never raises for missing or damaged files."""
    notes: list[str] = []
    if not path.is_dir():
        notes.append("the run folder does not exist")
    config = _with_ladder_step(_read_json(path / "config.json", notes))
    env = _read_json(path / "env.json", notes)
    metrics = _read_metrics(path / "metrics.jsonl", notes)
    result = {}
    if (path / "result.json").is_file():
        result = _read_json(path / "result.json", notes)
    else:
        notes.append("result.json is missing (the run is still going, crashed, or is from an older version): "
                     "numbers below come from metrics.jsonl")
    return RunData(path.name, path, config, env, metrics, result, notes)


def _run_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (RUN_ID.match(p.name) or (p / "config.json").is_file()))


def _tag(config: dict[str, Any], prefix: str) -> str | None:
    return next((t[len(prefix):] for t in config.get("tags") or [] if isinstance(t, str) and t.startswith(prefix)), None)


def _ladder_source(config: dict[str, Any], name: str) -> str:
    """Where ladder `name` of a run is read from: the ladder file the run records (`source:` tag), else the name."""
    from convladder.executors.base import SOURCE_TAG

    recorded = _tag(config, SOURCE_TAG)
    return recorded if recorded and Path(recorded).is_file() else name


def _ladder(source: str) -> Any:
    """The ladder of a built-in name or file; read again when the file changes."""
    path = Path(source)
    return _ladder_cached(source, path.stat().st_mtime_ns if path.is_file() else None)


@functools.lru_cache(maxsize=8)
def _ladder_cached(source: str, stamp: int | None) -> Any:
    from convladder.ladder.ladder import load_ladder

    return load_ladder(source)


def _ladder_steps_by_index(source: str) -> dict[int, Any]:
    try:
        return {step.index: step for step in _ladder(source).steps}
    except Exception:  # noqa: BLE001 - a ladder file that moved or changed: the report shows what the runs say
        return {}


def _with_ladder_step(config: dict[str, Any]) -> dict[str, Any]:
    """A `convladder ladder run` run says its ladder and step in tags (ladder:NAME, step:I, source:FILE); the report
    reads `ladder`, `step`, `step_name`, `change`, `handout` keys, filled here from the tags and the ladder file
    (the one the run records, else the built-in of that name)."""
    name, step = _tag(config, "ladder:"), _tag(config, "step:")
    if config.get("ladder") is not None or name is None or step is None or not step.isdigit():
        return config
    out = {**config, "ladder": name, "step": int(step)}
    known = _ladder_steps_by_index(_ladder_source(config, name)).get(int(step))
    if known is not None:
        _fill_step(out, known)
    else:  # no ladder file here: the step's name is in the run's name, "<ladder> <i>. <step name>"
        prefix = f"{name} {step}. "
        if isinstance(config.get("name"), str) and config["name"].startswith(prefix):
            out.setdefault("step_name", config["name"][len(prefix):])
    return out


def _fill_step(config: dict[str, Any], step: Any) -> None:
    """The ladder file's words for a step: its name, change and the handout's figures."""
    config.setdefault("step_name", step.name)
    config.setdefault("change", step.change)
    config.setdefault("handout", step.handout)


# the ladder file's words for a step (`_fill_step`), filled in when read: not what the run did
_STEP_WORDS = ("step_name", "change", "handout")


def experiment_key(config: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs the same experiment: the config (as load_run reads it) but for the seed, name, tags
    and where it ran."""
    from convladder.train.config import ADDED_LATER, NOT_THE_EXPERIMENT  # what each config key is: its field says

    # a key newer than some runs, at the value those runs had, is what they did too (precision: auto)
    return {k: v for k, v in config.items() if k not in NOT_THE_EXPERIMENT and k not in _STEP_WORDS
            and not (k in ADDED_LATER and v == ADDED_LATER[k])}


def _config(folder: Path) -> dict[str, Any]:
    return read_json(folder / "config.json", [])


def _ladder_name(config: dict[str, Any]) -> str | None:
    value = config.get("ladder") or _tag(config, "ladder:")
    return str(value) if value is not None else None


def ladder_file_of(target: str) -> Path | None:
    """The ladder YAML file a report target names (`my-ladder.yaml`), or None."""
    path = Path(target).expanduser()
    return path if path.suffix.lower() in (".yaml", ".yml") and path.is_file() else None


def _ladder_file_name(target: str) -> str | None:
    """The name of the ladder in the YAML file `target`, or None when `target` is no ladder file."""
    path = ladder_file_of(target)
    if path is None:
        return None
    try:
        return _ladder(str(path)).name
    except UserError as exc:  # a sweep's or frontier's YAML, or a broken ladder: say which target it was taken for
        raise UserError(f"{target} was read as a ladder file: {exc}") from None


def is_path_like(target: str) -> bool:
    """Whether a report target is written as a path ('/etc', './x', '~/runs/x'), not a name or run id."""
    return "/" in target or "\\" in target or target.startswith(("~", "."))


def resolve_target(target: str, root: str | Path | None = None) -> tuple[str, list[RunData]]:
    """('run', [run]) or ('ladder', every run of that ladder, newest first) for a run folder, ladder name or file, or a run id, prefix,
    'latest' or 'latest:<model/name/tag>' (looked up by the run store, the one run lookup).

    Raises UserError naming what to do when nothing matches.
    """
    store = RunStore(root)
    root = store.root
    direct = Path(target).expanduser()
    if target.strip() and direct.is_dir() and any((direct / f).exists() for f in RUN_FILES):
        return "run", [load_run(direct)]
    name = _ladder_file_name(target)  # `report my-ladder.yaml`: the runs of the ladder that file names
    if target.strip() and is_path_like(target) and name is None:
        what = "is a folder but not a run folder" if direct.is_dir() else (
            "is a file, not a run folder" if direct.exists() else "does not exist")
        raise UserError(f"{direct} {what} (a run folder holds {', '.join(RUN_FILES[:3])}, ...) — give a run "
                        f"folder, a run id or prefix, 'latest', or a ladder name (see `convladder runs list --runs {root}`)")
    folders = _run_folders(root)
    configs = {f: _config(f) for f in folders}
    ladder = [f for f, c in configs.items() if _ladder_name(c) == (name or target)]
    if ladder:  # every run of the ladder, newest first; ladder_selection picks the ones that stand for the steps
        return "ladder", [load_run(f) for f in sorted(ladder, key=lambda f: f.name, reverse=True)]
    if name is not None:
        raise UserError(f"ladder {name!r} ({target}) has no runs in {root} — run it first: "
                        f"`convladder ladder run {target} --runs {root}`")
    try:
        record = store.get(target)
    except UserError as err:
        if not str(err).startswith("no run"):
            raise
        raise UserError(f"no run or ladder {target!r} in {root} — see `convladder runs list --runs {root}` "
                        f"for run ids (or pass a run folder path, or --runs DIR for another store)") from None
    return "run", [load_run(root / record.id)]


# -- numbers for the result block and the ladder table ---------------------------------------------------

def final_numbers(run: RunData) -> dict[str, Any]:
    """final/best/gap/potential/verdict from result.json, falling back to the last metrics row."""
    r, last = run.result, (run.metrics[-1] if run.metrics else {})
    final = r.get("final") if isinstance(r.get("final"), dict) else {}
    best = r.get("best") if isinstance(r.get("best"), dict) else {}
    train = final.get("train_acc", last.get("train_acc"))
    test = final.get("test_acc", last.get("test_acc"))
    gap = r.get("gap", None if train is None or test is None else train - test)
    pot = r.get("potential", None if train is None or test is None else test + 100 - train)
    table = run.table() if run.config else None
    return {
        "status": r.get("status") or ("running or incomplete" if run.metrics else "no data"),
        "params": r.get("params") or (table.trainable_params if table else None),
        "rf": (table.rf_out if table.rf_out is not None else table.rf_out_text) if table else None,  # "3-4": varies
        "epochs": r.get("epochs_done", len(run.metrics) or None),
        # the epoch the final accuracies are of: the last one trained, unless a run ended between evaluations
        "final_epoch": final.get("epoch") or r.get("epochs_done", len(run.metrics) or None),
        "train_acc": train, "train_acc_source": r.get("train_acc_source", "seen during training (metrics)"),
        "test_acc": test, "val_acc": final.get("val_acc", last.get("val_acc")),
        "best_epoch": best.get("epoch"), "best_test_acc": best.get("test_acc"), "best_val_acc": best.get("val_acc"),
        "selected_by": best.get("selected_by"),
        "gap": gap, "potential": pot, "verdict": r.get("verdict"), "target": r.get("target", run.config.get("target")),
        "wall_time_s": r.get("wall_time_s"), "seed": r.get("seed", run.config.get("seed")),
        "shifted": r.get("shifted_test") if isinstance(r.get("shifted_test"), dict) else None,
        # config teacher (train/distill.py): the teacher's run, model, params, T and weight; params above: the student's
        "distilled_from": r.get("distilled_from") if isinstance(r.get("distilled_from"), dict) else _taught(run.config),
        # config ema (train/ema.py): the accuracies above are the weight average's; None for live weights
        "weights": _weights(r, run.config),
        "classes": output_classes(table),  # chance = 100/classes: when a potential means nothing (None: 10)
    }


def _weights(result: dict[str, Any], config: dict[str, Any]) -> str | None:
    """'EMA weights (decay 0.999 per step)' for a run trained with config ema (result.json extra.weights, or
    config.json while result.json is not written yet), else None."""
    extra = result.get("extra") if isinstance(result.get("extra"), dict) else {}
    if isinstance(extra.get("weights"), str):
        return extra["weights"]
    ema = config.get("ema") if isinstance(config, dict) else None
    ok = isinstance(ema, (int, float)) and not isinstance(ema, bool) and ema > 0
    return f"EMA weights (decay {ema:g} per step)" if ok else None


def _taught(config: dict[str, Any]) -> dict[str, Any] | None:
    """What config.json says of a teacher while result.json does not (a running run), else None."""
    from convladder.train.distill import config_record

    return config_record(config) if isinstance(config, dict) else None


def spread(values: list[float | None]) -> dict[str, float] | None:
    from convladder.train.result import min_median_max

    s = min_median_max(values)
    return s and {**s, "n": sum(v is not None for v in values)}


def ladder_selection(name: str, runs: list[RunData], source: str | Path | None = None) -> tuple[list[RunData], list[str]]:
    """The runs that stand for the steps of ladder `name`, chosen as `convladder ladder report` chooses them
    (convladder.ladder.compare.select_runs: the newest `ladder run` options, not stale, one completed run per
    seed), and notes saying what was left out. `runs` are newest first. The ladder file is `source` (the report's
    target), else the one the runs record, else the built-in of that name; its step names and changes label the runs.

    Runs without job tags (made by hand) or of a ladder file that cannot be found here: the newest options'
    runs; of each step the runs of its newest run's config (the others are stale), one completed run per seed.
    """
    from convladder.ladder.compare import campaign_tag, one_run_per_seed, select_runs

    notes: list[str] = []
    opts = campaign_tag(runs)
    tagged = [r for r in runs if any(t.startswith("job:") for t in r.tags)]
    ladder = None
    try:
        from convladder.ladder.ladder import load_ladder_of

        ladder = _ladder(str(source)) if source is not None else load_ladder_of(name, runs)
    except Exception as exc:  # noqa: BLE001 - a ladder file that is not here: the runs still make a report
        if tagged:
            notes.append(f"the ladder file of {name!r} is not found here ({str(exc)[:200]}): a step's current "
                         "config is taken to be its newest run's")
    if ladder is not None:
        for run in runs:  # runs that do not record their ladder file: the file found here names their steps
            if isinstance(run.config.get("step"), int) and 1 <= run.config["step"] <= len(ladder.steps):
                _fill_step(run.config, ladder.step(run.config["step"]))
    if not tagged:
        ladder = None  # hand-made runs: no job keys to ask the ladder file about
    if ladder is not None:
        steps = [(f"step {s.step.index}", s.completed, len(s.chosen), s.stale, len(s.fresh))
                 for s in select_runs(ladder, tagged, opts, tagged[0].path.parent if tagged else None)]
    else:  # no ladder file to ask: the newest run of a step says its current config
        groups: dict[Any, list[RunData]] = {}
        for run in runs:
            if opts is None or opts in run.tags:
                groups.setdefault(run.config.get("step"), []).append(run)
        steps = []
        for step, members in groups.items():
            fresh = [r for r in members if experiment_key(r.config) == experiment_key(members[0].config)]
            chosen = one_run_per_seed(fresh)
            steps.append((f"step {step}", [r for r in chosen if r.status == "completed"], len(chosen),
                          len(members) - len(fresh), len(fresh)))
    chosen_runs: list[RunData] = []
    for label, done, n_chosen, stale, n_fresh in steps:
        chosen_runs += done
        left = [f"{n_chosen - len(done)} seed(s) with no completed run (failed or interrupted)" if n_chosen > len(done)
                else "", f"{n_fresh - n_chosen} repeated run(s) of a seed" if n_fresh > n_chosen else "",
                f"{stale} stale run(s) of an older ladder file or config" if stale else ""]
        if any(left):
            notes.append(f"{label}: left out " + ", ".join(x for x in left if x))
    if tagged and len(tagged) < len(runs):  # the ladder's job tags choose: runs without them are not its jobs
        notes.append(f"{len(runs) - len(tagged)} run(s) tagged with the ladder but without a `ladder run` job tag "
                     "(made by hand or by an older convladder) left out")
    other = sum(1 for r in (tagged or runs) if opts is not None and opts not in r.tags)
    if other:
        notes.append(f"{other} run(s) made with other `ladder run` options than the newest ({opts}) left out")
    return chosen_runs, notes


def ladder_steps(runs: list[RunData]) -> list[dict[str, Any]]:
    """One summary row per ladder step (seeds grouped), in step order; the numbers are the median run's
    (train.result.median_item: the lower of the middle two), the spread is over every run given."""
    from convladder.train.result import median_item

    groups: dict[Any, list[RunData]] = {}
    for run in runs:
        groups.setdefault(run.config.get("step"), []).append(run)
    rows = []
    for step in sorted(groups, key=lambda s: (s is None, s if isinstance(s, (int, float)) else str(s))):
        members = groups[step]
        nums = [final_numbers(r) for r in members]
        # the project's one rule for the median run, applied to these runs' final test accuracies
        med = median_item(list(zip(nums, members)), lambda pair: pair[0]["test_acc"])
        verdicts = sorted({n["verdict"] for n in nums if n["verdict"]})
        c = members[0].config
        rows.append({
            "step": step, "step_name": c.get("step_name") or f"step {step}", "change": c.get("change") or "",
            "handout": c.get("handout"), "runs": members, "median_run": med[1], "seeds": len(members),
            "params": med[0]["params"], "rf": med[0]["rf"], "train_acc": med[0]["train_acc"],
            "test_acc": med[0]["test_acc"], "best_epoch": med[0]["best_epoch"], "best_test_acc": med[0]["best_test_acc"],
            "final_spread": spread([n["test_acc"] for n in nums]), "gap": med[0]["gap"],
            "potential": med[0]["potential"], "verdict": ", ".join(verdicts) or None,
            "shifted": med[0]["shifted"], "classes": med[0]["classes"], "weights": med[0]["weights"],
        })
    return rows
