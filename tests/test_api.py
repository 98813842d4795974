"""The public Python API (`convladder.__all__`): each name documented, light to import, and giving what the CLI
gives (the same text, the same errors); the example notebooks import nothing private."""

from __future__ import annotations

import ast
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import convladder
from cli_util import run_cli
from convladder.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)
FAST = dict(dataset="synthetic", epochs=2, val_size=128, subset=512, batch_size=128, clean_train_eval=256)


def _flat(text: str) -> str:
    """Text with its line wrapping and runs of spaces undone (a terminal wraps the CLI's findings at its width)."""
    return re.sub(r"\s+", " ", text).strip()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("runs")
    results = [convladder.train("tiny8k", runs=root, quiet=True, seed=s, tags=[f"t{s}"], **FAST) for s in (1, 2)]
    return root, results


def test_import_is_light_and_every_name_resolves() -> None:
    code = ("import sys, convladder; assert 'torch' not in sys.modules, 'torch at import';"
            "[getattr(convladder, n) for n in ('runs', 'ladder', 'doctor', 'load', 'check')];"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # naming the API's functions imports no torch either
    for name in convladder.__all__:
        obj = getattr(convladder, name)
        assert name == "__version__" or callable(obj), name
    # runs, ladder and doctor are subpackages too: once imported as modules they stay callable API functions
    import importlib

    for module in ("convladder.doctor.run", "convladder.ladder.ladder", "convladder.runs.store"):
        importlib.import_module(module)
    for name in ("runs", "ladder", "doctor"):
        assert callable(getattr(convladder, name)) and hasattr(getattr(convladder, name), "__path__"), name
    assert "status" in inspect.signature(convladder.runs).parameters
    assert "steps" in inspect.signature(convladder.ladder).parameters


def test_every_public_name_is_documented() -> None:
    doc = (ROOT / "docs" / "python.md").read_text()
    for name in convladder.__all__:
        if name == "__version__":
            continue
        assert f"convladder.{name}" in doc, f"docs/python.md does not document convladder.{name}"
        func = getattr(convladder, name)
        target = convladder._api_function(f"convladder.{name}") if name in convladder._PACKAGES else func
        assert (inspect.getdoc(target) or "").strip(), f"convladder.{name} has no docstring"


def test_runs_and_load_show_what_the_cli_shows(store, capsys) -> None:
    root, results = store
    listed = convladder.runs(runs=root)
    assert [r.id for r in listed] == sorted((r.run_id for r in results), reverse=True)
    code, out, _ = run_cli(capsys, "runs", "list", "--runs", str(root))
    assert code == 0 and str(listed) == out.rstrip("\n")
    assert [r.id for r in convladder.runs(runs=root, tag="t2")] == [results[1].run_id]  # filtered like the CLI
    assert convladder.runs(runs=root, status="failed") == [] and "no runs" in str(convladder.runs(runs=root, tag="x"))
    assert "<table" in listed._repr_html_()

    run = convladder.load(results[0])  # the training result itself; an id, prefix or folder work too
    folder = root / results[0].run_id
    assert run.config == json.loads((folder / "config.json").read_text())
    assert run.metrics == [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert run.result.final == results[0].final and convladder.load(str(folder)).id == run.id
    others = [r.run_id for r in results if r.run_id != run.id]
    # the shortest prefix no other run shares: two runs started in the same second differ only after it
    prefix = next(run.id[:n] for n in range(16, len(run.id) + 1) if not any(o.startswith(run.id[:n]) for o in others))
    assert convladder.load(prefix, runs=root).id == run.id
    code, out, _ = run_cli(capsys, "runs", "show", run.id, "--runs", str(root))
    assert str(run) == out.rstrip("\n")
    assert "final (last epoch)" in run._repr_html_() and "train acc*" in run._repr_html_()
    code, out, _ = run_cli(capsys, "runs", "compare", results[0].run_id, results[1].run_id, "--runs", str(root))
    assert str(convladder.compare(*results)) == out.rstrip("\n")
    with pytest.raises(UserError, match="no run 'nothere'"):
        convladder.load("nothere", runs=root)
    with pytest.raises(UserError, match="two or more runs"):
        convladder.compare(results[0])
    from convladder.train.result import SeedResults

    both = SeedResults(results)
    assert str(convladder.compare(both)) == str(convladder.compare(*results))  # a seeds result is its runs
    with pytest.raises(UserError, match="one per seed — load one"):
        convladder.load(both)
    assert convladder.load(run) is run


def test_a_run_gives_its_network_figures_and_report(store) -> None:
    root, results = store
    run = convladder.load(results[0].run_id, runs=root)
    from safetensors.torch import load_file

    model = run.model()
    saved = load_file(str(root / run.id / "model.safetensors"))
    assert not model.training and all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    best = run.model("best")
    assert set(best.state_dict()) == set(saved)
    assert "<svg" in run.curves()._repr_html_() and "curves" in repr(run.curves())
    grid = run.misclassified(8)
    assert "data:image/png;base64," in grid._repr_html_() and "misclassified" in grid.name
    assert "confusion" in run.confusion().name


@pytest.mark.slow  # the report draws every figure (~10 s on 2 shared cores)
def test_a_runs_report_and_dashboards(store, tmp_path: Path) -> None:
    root, results = store
    run = convladder.load(results[0].run_id, runs=root)
    report = run.report()
    assert "<iframe srcdoc=" in report._repr_html_() and run.id in report.html
    handin = run.handin(tmp_path / "handin")
    assert handin.data == tmp_path / "handin" / "README.md" and str(handin) == handin.data.read_text()
    assert re.search(r"\]\((?!/)[^)]+\.png\)", str(handin))  # figures linked relatively, beside it
    pytest.importorskip("tensorboard")
    folder = run.to_tensorboard(tmp_path / "tb")
    assert folder.name.endswith(run.id) and list(folder.glob("events.out.tfevents.*"))


def test_check_matches_the_cli_and_its_errors(capsys) -> None:
    findings = convladder.check("tiny8k", budget="2k")
    code, out, _ = run_cli(capsys, "check", "tiny8k", "--budget", "2k")
    assert code == 1 and not findings.ok and _flat(str(findings)) == _flat(out)
    assert any(f.rule == "budget" and f.severity == "error" for f in findings)
    assert "budget" in findings._repr_html_()
    assert convladder.check("tiny8k").ok  # the CLI's default budget, 20k
    with pytest.raises(UserError, match="write a parameter count such as 20k"):
        convladder.check("tiny8k", budget="lots")


def test_predict_matches_the_cli(store, capsys, tmp_path: Path) -> None:
    root, results = store
    images = tmp_path / "digits.npy"
    np.save(images, (np.random.default_rng(0).random((3, 28, 28)) * 255).astype(np.uint8))
    rows = convladder.predict(results[0], [images], runs=root)
    code, out, _ = run_cli(capsys, "predict", results[0].run_id, str(images), "--runs", str(root))
    assert code == 0 and str(rows) == out.rstrip("\n") and len(rows) == 3
    code, out, _ = run_cli(capsys, "predict", results[0].run_id, str(images), "--runs", str(root), "--json")
    assert rows == json.loads(out)["images"]
    with pytest.raises(UserError, match="top_k must be at least 1"):
        convladder.predict(results[0], [images], runs=root, top_k=0)


@pytest.mark.slow  # onnx and onnxruntime take seconds to import
def test_export_matches_the_cli(store, tmp_path: Path) -> None:
    root, results = store
    pytest.importorskip("onnxruntime")
    done = convladder.export(results[0].run_id, out=tmp_path / "m.onnx", runs=root, check=False)
    assert done.path == tmp_path / "m.onnx" and done.path.stat().st_size > 1000
    assert str(done).startswith(f"wrote {tmp_path / 'm.onnx'}")
    with pytest.raises(UserError, match="format tflite is not supported"):
        convladder.export(results[0].run_id, format="tflite", runs=root)


def test_doctor_lr_find_sweep_and_ladder(store, capsys, tmp_path: Path) -> None:
    root, _ = store
    doc = convladder.doctor("tiny8k", dataset="synthetic", only="data,init", quiet=True)
    assert doc.ok and str(doc).startswith("doctor: tiny8k") and doc.data.check("init").status == "pass"
    with pytest.raises(UserError, match="unknown doctor check"):
        convladder.doctor("tiny8k", dataset="synthetic", only="nonsense", quiet=True)
    found = convladder.lr_find("tiny8k", dataset="synthetic", subset=512, steps=12, out=tmp_path / "lr")
    assert (tmp_path / "lr.json").is_file() and "suggested lr" in str(found)
    assert found.suggested_lr == json.loads((tmp_path / "lr.json").read_text())["suggested_lr"]

    spec = "c1[conv3x3({c1}, bias=false) relu bn] t[maxpool2x2 conv1x1(8)] out[gap conv1x1(10)]"
    base = {"dataset": "synthetic", "subset": 256, "epochs": 1, "val_size": 0, "batch_size": 64, "threads": 1}
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f'name: api\nmodel: "{spec}"\nbudget: 5000\nsearch: grid\nseeds: 1\nbase: {json.dumps(base)}\n'
                     "params:\n  c1: {role: studied, values: [4, 8]}\n")
    code, out, _ = run_cli(capsys, "sweep", str(sweep), "--dry-run", "--runs", str(tmp_path / "sw"))
    assert code == 0 and str(convladder.sweep(sweep, dry_run=True, runs=tmp_path / "sw")) == out.rstrip("\n")
    ranked = convladder.sweep(sweep, runs=tmp_path / "sw", quiet=True)
    assert ranked["counts"]["completed"] == 2 and "summary:" in str(ranked)

    steps = convladder.ladder("gap-vs-fc", steps="1-2", epochs=1, subset=256, dataset="synthetic",
                              runs=tmp_path / "lad", quiet=True, handin=tmp_path / "handin")
    assert len(steps.data["steps"]) >= 2 and str(steps).startswith("ladder gap-vs-fc")
    assert steps.data["handin"] == tmp_path / "handin" / "README.md" and steps.data["handin"].is_file()
    code, out, _ = run_cli(capsys, "ladder", "report", "gap-vs-fc", "--runs", str(tmp_path / "lad"))
    assert str(steps) == out.rstrip("\n")
    with pytest.raises(UserError, match="not lr"):
        convladder.ladder("gap-vs-fc", lr=0.1, runs=tmp_path / "lad")


@pytest.mark.slow  # counting the default space's networks: ~5 s of CPU per call
def test_frontier_dry_run_matches_the_cli(capsys, tmp_path: Path) -> None:
    plan = convladder.frontier(budgets="2k", trials=2, dry_run=True, runs=tmp_path)
    code, out, _ = run_cli(capsys, "frontier", "--budgets", "2k", "--trials", "2", "--dry-run", "--runs", str(tmp_path))
    assert code == 0 and str(plan) == out.rstrip("\n") and str(plan).startswith("budget 2,000:")
    with pytest.raises(UserError, match="seeds must be at least 1"):
        convladder.frontier(seeds=0)


# -- the example notebooks use only the public API -------------------------------------------------------------

ALLOWED = {"convladder", "torch", "IPython.display"}  # and the standard library


def private_uses(source: str) -> list[str]:
    """Imports and attribute paths of a notebook cell that reach past the public API."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
            if node.module == "convladder":
                bad += [f"from convladder import {a.name}" for a in node.names if a.name not in convladder.__all__]
        for name in names:
            top = name.split(".")[0]
            public = name in ALLOWED or top == "torch" or (top != "convladder" and top in sys.stdlib_module_names)
            if not public:
                bad.append(f"import {name}")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "convladder" \
                and node.attr not in convladder.__all__:
            bad.append(f"convladder.{node.attr}")
    return bad


def test_the_checker_sees_private_paths() -> None:
    assert private_uses("from convladder.report import figures\nimport convladder.runs.store\n"
                        "convladder.report.html\nfrom convladder import _train\nimport numpy") == [
        "import convladder.report", "import convladder.runs.store", "from convladder import _train",
        "import numpy", "convladder.report"]
    assert private_uses("import os\nimport torch.nn.functional as F\nfrom IPython.display import HTML\n"
                        "import convladder\nconvladder.load('latest').curves()") == []


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.ipynb")), ids=lambda p: p.name)
def test_examples_import_only_the_public_api(path: Path) -> None:
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    bad = {i: private_uses("".join(c["source"])) for i, c in enumerate(cells)}
    assert not {i: b for i, b in bad.items() if b}, f"{path.name}: code cells reach private paths"


# -- installing where torch already is ------------------------------------------------------------------------

def test_pyproject_leaves_the_torch_version_open() -> None:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert [d for d in deps if re.match(r"torch\b", d)] == ["torch>=2.2"]  # no pin, no upper bound: Colab's CUDA torch stays


@pytest.mark.slow  # a fresh venv and a real pip install (~15-25 s on 2 shared cores)
def test_pip_install_into_an_env_that_holds_torch_leaves_torch_as_it_is(tmp_path: Path) -> None:
    import os
    import shutil

    torch_dir = Path(torch.__file__).resolve().parents[1]  # the site-packages that holds this torch
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the fresh env sees only its own paths
    venv = tmp_path / "venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(venv)],
                   check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "holds_torch.pth").write_text(f"{torch_dir}\n")  # the fresh env holds this (pinned) torch already

    def torch_in_venv() -> tuple[str, str]:
        out = subprocess.run([py, "-c", "import torch; print(torch.__version__); print(torch.__file__)"],
                             capture_output=True, text=True, check=True, env=env).stdout.split()
        return out[0], out[1]

    before = torch_in_venv()
    assert before[0] == torch.__version__
    src = tmp_path / "src"  # a copy of the sources, so the build writes nothing into the checkout
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    # `pip install .` with the extras, offline: pip may take nothing from an index, so a torch requirement the
    # present torch does not meet fails here instead of pulling another torch
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-index",
                           "--no-build-isolation", "--quiet", f"{src}[tensorboard,mlflow]"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch_in_venv() == before  # the same torch, from the same place
    listed = subprocess.run([py, "-c", "import convladder, importlib.metadata as m; print(convladder.__file__); "
                             "print(m.version('convladder'))"], capture_output=True, text=True, check=True,
                            env=env).stdout
    assert str(venv) in listed.splitlines()[0] and listed.splitlines()[1] == convladder.__version__
