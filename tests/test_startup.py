"""An instant CLI (issue 31): the commands that compute nothing never import torch.

Each command runs in a fresh interpreter; the check reads `sys.modules` after the command, so it is about the
module list, not about time (bench/bench_startup.py measures the time).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from convladder.ladder.ladder import builtin_names, load_ladder
from convladder.runs.store import RunStore
from convladder.spec.size import estimate_size
from convladder.train.config import TrainConfig
from convladder.train.loop import train

ROOT = Path(__file__).resolve().parent.parent
# runs the CLI's entry point as the console script does, then says whether torch (or $PROBE_MODULE) was imported
PROBE = """
import os, sys
from convladder.cli import main
try:
    main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
else:
    code = 0
module = os.environ.get("PROBE_MODULE", "torch")
sys.stderr.write("\\n%s imported: %s\\n" % (module, module in sys.modules))
sys.exit(code)
"""
TINY = ("c1[conv3x3(8, bias=false) relu bn] t1[maxpool2x2 conv1x1(8, bias=false)] "
        "out[gap conv1x1(10, bias=false) logsoftmax]")


def run_probe(args: list[str], runs: Path, module: str = "torch", **env: str) -> tuple[int, str, bool]:
    """(exit code, stdout, whether `module` was imported) of `convladder ARGS` in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "CONVLADDER_RUNS": str(runs), "PROBE_MODULE": module, **env})
    marker = proc.stderr.strip().splitlines()[-1]
    assert marker.startswith(f"{module} imported: "), proc.stderr
    return proc.returncode, proc.stdout, marker.endswith("True")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A store with one real run (1 epoch on synthetic data), so `runs list|show` read real files."""
    root = tmp_path_factory.mktemp("runs")
    train(TrainConfig(model=TINY, dataset="synthetic", subset=640, epochs=1, batch_size=64, val_size=64, threads=1,
                      clean_train_eval=64, name="startup-probe"), RunStore(root))
    return root


@pytest.mark.parametrize("args, expect", [
    (["--version"], "convladder "),
    (["--help"], "train"),
    (["train", "--help"], "--lr"),
    (["ladder", "run", "--help"], "--epochs"),
    (["models"], "tiny8k"),
    (["models", "--json"], '"params"'),
    (["runs", "list"], "startup-probe"),
    (["runs", "show", "latest"], "(completed)"),
    (["ladder", "check", "eip4-s2"], "ok: 15 steps"),
    (["ladder", "list"], "eip4-s2"),
])
def test_light_commands_do_not_import_torch(store: Path, args: list[str], expect: str) -> None:
    code, out, torch_imported = run_probe(args, store)
    assert code == 0 and expect in out
    assert not torch_imported, f"convladder {' '.join(args)} imported torch"


def test_shell_completion_does_not_import_torch(store: Path) -> None:
    code, out, torch_imported = run_probe([], store, _CONVLADDER_COMPLETE="complete_bash",
                                          COMP_WORDS="convladder tra", COMP_CWORD="1")
    assert code == 0 and out.split() == ["train"]
    assert not torch_imported


def test_the_probe_sees_torch_where_a_command_needs_it(store: Path) -> None:
    """The control: a command that traces a network does import torch, and the probe says so."""
    code, out, torch_imported = run_probe(["summary", "tiny8k"], store)
    assert code == 0 and "params" in out
    assert torch_imported


def test_summary_of_a_registered_network_does_not_import_dynamo(store: Path) -> None:
    """`summary` needs torch but not torch._dynamo (~1.6 s of CPU): a small spec's table is traced on the CPU;
    on the meta device F.relu runs through torch._refs, whose wrapper imports it. Module list, not time."""
    code, out, dynamo_imported = run_probe(["summary", "tiny8k"], store, module="torch._dynamo")
    assert code == 0 and "params 7,944" in out
    assert not dynamo_imported, "convladder summary tiny8k imported torch._dynamo"


def test_a_spec_table_leaves_the_rng_and_threads_and_imports_no_dynamo() -> None:
    """`convladder.summarize` of a spec in a fresh interpreter: the global RNG and the thread count are as they
    were (the CPU build draws from a forked generator, the trace's single thread is given back), no dynamo."""
    code = ("import sys, torch, convladder\n"
            "torch.manual_seed(7); torch.set_num_threads(2); state = torch.get_rng_state()\n"
            "table = convladder.summarize('tiny8k')\n"
            "print(table.total_params, torch.equal(state, torch.get_rng_state()), torch.get_num_threads(),\n"
            "      'torch._dynamo' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["7944", "True", "2", "False"]


@pytest.mark.parametrize("name", builtin_names())
def test_ladder_check_counts_from_the_spec_equal_the_traced_tables(name: str) -> None:
    """`ladder check` counts a spec step's parameters from the spec alone (spec/size.py, no torch): the same
    number the traced network table gives."""
    for step in load_ladder(name).steps:
        if step.spec is not None:
            assert estimate_size(step.spec).params == step.table().total_params, (name, step.index)


def test_the_static_command_table_matches_what_the_areas_register() -> None:
    """`convladder --help` lists cli.COMMANDS (name, area, short help) without importing the areas: the table must
    be what each area's register() adds, in the order and with the first help paragraph of the full tree."""
    import importlib
    import inspect

    import typer
    import typer.main

    from convladder.cli import COMMAND_AREAS, COMMANDS, build_command

    full = build_command()
    assert [name for name, _, _ in COMMANDS] == list(full.commands)
    for name, area, short in COMMANDS:
        assert inspect.cleandoc(full.commands[name].help or "").split("\n\n")[0] == short, name
    owners = {}
    for area in COMMAND_AREAS:
        sub = typer.Typer()
        importlib.import_module(f"{area}.commands").register(sub)
        owners.update({name: area for name in typer.main.get_group(sub).commands})
    assert owners == {name: area for name, area, _ in COMMANDS}


@pytest.mark.parametrize("args", [["--help"], ["runs", "--help"], ["models"], ["modls"]])
def test_the_lazy_tree_answers_as_the_full_one(args: list[str], capsys, monkeypatch) -> None:
    """The console script's lazy root group prints what the full command tree prints (help panels, a command's
    output, the 'Did you mean' of a typo) and exits with the same code."""
    from convladder.cli import build_command

    monkeypatch.setenv("COLUMNS", "120")
    answers = []
    for lazy in (True, False):
        with pytest.raises(SystemExit) as done:
            build_command(lazy=lazy).main(args=args, prog_name="convladder")
        answers.append((done.value.code, *capsys.readouterr()))
    assert answers[0] == answers[1]


@pytest.mark.parametrize("args, module", [
    (["models"], "convladder.train.commands"),  # another area's commands are not imported
    (["models"], "pydantic"),  # typer's coercion is built only for a value it must convert
    (["runs", "list"], "yaml"),  # the --runs option alone: no config or YAML parser
    (["runs", "show", "latest"], "pydantic"),
])
def test_light_commands_leave_heavy_modules_out(store: Path, args: list[str], module: str) -> None:
    code, out, imported = run_probe(args, store, module=module)
    assert code == 0 and out
    assert not imported, f"convladder {' '.join(args)} imported {module}"


def test_typers_coercion_is_built_only_for_a_value_it_must_convert(store: Path) -> None:
    """`runs list` coerces no value (options not given, --limit's int default): no pydantic; --limit 1 goes
    through typer's own coercion (pydantic imported), and --limit x is refused by it as before (exit 2)."""
    assert run_probe(["runs", "list"], store, module="pydantic")[2] is False
    code, out, pydantic_imported = run_probe(["runs", "list", "--limit", "1"], store, module="pydantic")
    assert code == 0 and "startup-probe" in out and pydantic_imported
    proc = subprocess.run([sys.executable, "-m", "convladder", "runs", "list", "--limit", "x"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env={**os.environ, "CONVLADDER_RUNS": str(store)})
    assert proc.returncode == 2 and "--limit" in proc.stderr
