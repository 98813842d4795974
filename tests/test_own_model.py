"""Own models: a person's nn.Module class trained, recorded, rebuilt, reported, predicted and exported.

Networks are written to files the way people write them (functional calls, view, residual adds);
the data is the generated `synthetic` set or, where marked, a 10k-image MNIST subset.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import convladder
from cli_util import run_cli
from convladder.errors import UserError
from convladder.runs.store import RunStore

HEAD = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n\n\n"

# pytorch/examples' MNIST Net, narrowed (8/16 channels, fc 32) so a test trains it in a second
EXAMPLES_NET = HEAD + '''class Net(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, 1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(2 * width * 12 * 12, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return F.log_softmax(self.fc2(x), dim=1)


if __name__ == "__main__":
    raise SystemExit("convladder must not run the script part of the file")
'''

# the course's style: Sequential blocks, F.max_pool2d, a 1x1, F.adaptive_avg_pool2d, x.view(-1, 10)
COURSE_NET = HEAD + '''class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.convblock1 = nn.Sequential(nn.Conv2d(1, 8, 3, bias=False), nn.ReLU(), nn.BatchNorm2d(8))
        self.convblock2 = nn.Sequential(nn.Conv2d(8, 16, 3, bias=False), nn.ReLU(), nn.BatchNorm2d(16))
        self.trans = nn.Conv2d(16, 8, 1, bias=False)
        self.convblock3 = nn.Sequential(nn.Conv2d(8, 16, 3, bias=False), nn.ReLU(), nn.BatchNorm2d(16))
        self.convblock4 = nn.Sequential(nn.Conv2d(16, 16, 3, bias=False), nn.ReLU(), nn.BatchNorm2d(16))
        self.out = nn.Conv2d(16, 10, 1, bias=False)

    def forward(self, x):
        x = self.convblock2(self.convblock1(x))
        x = F.max_pool2d(x, 2, 2)
        x = self.trans(x)
        x = self.convblock4(self.convblock3(x))
        x = F.adaptive_avg_pool2d(x, 1)
        x = self.out(x)
        x = x.view(-1, 10)
        return F.log_softmax(x, dim=-1)
'''

# a tiny ResNet: residual adds, a strided 1x1 shortcut, raw logits
RES_NET = HEAD + '''class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.short is None else self.short(x)))


class ResNet(nn.Module):
    def __init__(self, width=8, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = Block(width, width, 1)
        self.layer2 = Block(width, 2 * width, 2)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Probs(ResNet):
    def forward(self, x):
        return F.softmax(super().forward(x), dim=1)
'''

SYNTH = ["--dataset", "synthetic", "--epochs", "1", "--val-size", "256", "--threads", "1", "--no-augment"]
SYNTH_KEYS = dict(dataset="synthetic", epochs=2, val_size=256, threads=1, augment=False, batch_size=64,
                  optimizer="adam", lr=0.01)


def cli(*args: str, capsys) -> tuple[int, str, str]:
    return run_cli(capsys, *args)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def plain_import(path: Path, name: str):
    """The person's own class, imported the ordinary way (not through convladder)."""
    spec = importlib.util.spec_from_file_location(f"plain_{path.stem}_{abs(hash(path.read_text()))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def run_folders(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []


# -- building: output kinds, logits, state_dict keys ---------------------------------------------------------

@pytest.mark.parametrize("text,cls,kind", [(EXAMPLES_NET, "Net", "log_probs"), (COURSE_NET, "Net", "log_probs"),
                                           (RES_NET, "ResNet", "logits"), (RES_NET, "Probs", "probs")])
def test_own_class_gets_logits_and_keeps_its_state_dict(tmp_path, capsys, text, cls, kind):
    path = write(tmp_path, "net.py", text)
    model = convladder.create_model(f"{path}:{cls}", seed=3)
    plain = plain_import(path, cls)()
    assert list(model.state_dict()) == list(plain.state_dict())  # safetensors load into the person's class
    assert isinstance(model, nn.Module) and type(model).__name__ == cls
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    out, logits = model(x), model.logits(x)
    assert logits.shape == (4, 10)
    if kind == "probs":
        assert torch.allclose(logits, torch.log(out), atol=1e-5)
        assert "returns probabilities" in capsys.readouterr().err
    else:
        assert torch.equal(logits, out)
    # cross-entropy on the logits is the loss the person meant (nll of log-softmax)
    y = torch.arange(4)
    assert torch.allclose(F.cross_entropy(logits, y), F.nll_loss(F.log_softmax(out if kind == "logits" else logits, 1), y))
    again = convladder.create_model(f"{path}:{cls}", seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_resolve_spec_says_an_own_class_is_not_a_spec():
    from convladder.spec.registry import resolve_spec

    with pytest.raises(UserError, match="your own class"):
        resolve_spec("nets/my_net.py:Net")


def test_import_convladder_does_not_import_torch():
    code = "import sys, convladder; print('torch' in sys.modules, callable(convladder.train))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.split()
    assert out == ["False", "True"]


# -- bad input: one line, exit 2, no run folder -------------------------------------------------------------

BAD = {
    "missing file": ("", "gone.py:Net", "does not exist"),
    "import fails": (HEAD + "import not_a_module_xyz\n", "bad.py:Net", "ModuleNotFoundError: No module named 'not_a_module_xyz'"),
    "syntax error": (HEAD + "class Net(nn.Module:\n    pass\n", "bad.py:Net", "bad.py line 6"),
    "class not defined": (EXAMPLES_NET, "bad.py:Nett", "does not define 'Nett' (its nn.Module classes: Net)"),
    "not a module class": (HEAD + "class Net:\n    pass\n", "bad.py:Net", "not a subclass of torch.nn.Module"),
    "constructor raises": (HEAD + "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                           "        raise ValueError('width must be even')\n", "bad.py:Net",
                           "Net(**{}) raised ValueError: width must be even"),
    "feature maps out": (HEAD + "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                         "        self.c = nn.Conv2d(1, 10, 3)\n    def forward(self, x):\n        return self.c(x)\n",
                         "bad.py:Net", "GAP then a 1x1 conv to 10 channels"),
    "1x1 map not flattened": (HEAD + "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                              "        self.c = nn.Conv2d(1, 10, 28)\n    def forward(self, x):\n        return self.c(x)\n",
                              "bad.py:Net", "x.view(-1, 10)"),
    "wrong class count": (RES_NET, "bad.py:ResNet", "data set has 10 classes"),
    "cannot run on 28x28": (HEAD + "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                            "        self.c = nn.Conv2d(1, 4, 3)\n        self.fc = nn.Linear(4 * 30 * 30, 10)\n"
                            "    def forward(self, x):\n        return self.fc(torch.flatten(self.c(x), 1))\n",
                            "bad.py:Net", "bad.py:Net cannot run on a 28x28x1 input"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_own_model_is_one_line_exit_2_and_leaves_no_run(tmp_path, monkeypatch, capsys, case):
    text, ref, expected = BAD[case]
    if text:
        write(tmp_path, "bad.py", text)
    monkeypatch.chdir(tmp_path)
    extra = ["--model-args", '{"classes": 7}'] if case == "wrong class count" else []
    code, _, err = cli("train", "--model", ref, *extra, *SYNTH, "--runs", "runs", capsys=capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert expected in lines[0], lines[0]
    assert ref.split(":")[0] in lines[0] or ref.split(":")[1] in lines[0]  # names the file or class
    assert run_folders(tmp_path / "runs") == []
    assert RunStore(tmp_path / "runs").list_runs() == []


def test_bad_model_args_json(tmp_path, monkeypatch, capsys):
    write(tmp_path, "net.py", EXAMPLES_NET)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("train", "--model", "net.py:Net", "--model-args", '{"width": 4', *SYNTH, "--runs", "runs",
                       capsys=capsys)
    assert code == 2 and "is not valid JSON" in err and run_folders(tmp_path / "runs") == []
    code, _, err = cli("train", "--model", "tiny8k", "--model-args", '{"width": 4}', *SYNTH, "--runs", "runs",
                       capsys=capsys)
    assert code == 2 and "model_args apply to an own model" in err


def test_a_file_is_imported_only_in_the_explicit_form(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "imported"
    write(tmp_path, "net.py", f"open({str(marker)!r}, 'w').close()\n" + EXAMPLES_NET)
    monkeypatch.chdir(tmp_path)
    for args in (["train", "--model", "net.py", *SYNTH, "--runs", "runs"], ["summary", "net.py"],
                 ["summary", str(tmp_path / "net.py")]):
        code, _, _ = cli(*args, capsys=capsys)
        assert code == 2 and not marker.exists(), args
    code, out, _ = cli("summary", "net.py:Net", "--model-args", '{"width": 4}', capsys=capsys)
    assert code == 0 and marker.exists() and "maxpool" in out


# -- training, recording, rebuilding ----------------------------------------------------------------------

def test_cli_run_records_the_class_and_rebuilds_it(tmp_path, monkeypatch, capsys):
    path = write(tmp_path, "my_net.py", EXAMPLES_NET)
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("train", "--model", "my_net.py:Net", "--model-args", '{"width": 4}', *SYNTH, "--epochs", "2",
                         "--runs", "runs", capsys=capsys)
    assert code == 0, err
    store = RunStore(tmp_path / "runs")
    (record,) = store.list_runs()
    folder = store.root / record.id
    config = json.loads((folder / "config.json").read_text())
    assert config["model"] == "my_net.py:Net" and config["model_spec"] == f"{path.resolve()}:Net"
    assert config["model_args"] == {"width": 4}
    own = json.loads((folder / "own_model.json").read_text())
    assert own["cls"] == "Net" and own["file"] == str(path.resolve()) and own["args"] == {"width": 4}
    assert own["output"] == "log_probs" and own["rebuild"] == "file"
    assert (folder / "model_source.py").read_text() == EXAMPLES_NET
    assert own["sha256"] == __import__("hashlib").sha256(EXAMPLES_NET.encode()).hexdigest()
    result = json.loads((folder / "result.json").read_text())
    assert result["final"]["test_acc"] > 50  # chance is 10 %
    assert record.params == sum(p.numel() for p in plain_import(path, "Net")(width=4).parameters())

    # the weights load into the person's own class, imported without convladder, and agree with the rebuild
    plain = plain_import(path, "Net")(width=4).eval()
    plain.load_state_dict(load_file(str(folder / "model.safetensors")))
    rebuilt = convladder.create_model(record.id, runs=store.root)
    x = torch.randn(8, 1, 28, 28)
    assert torch.allclose(rebuilt(x), plain(x), atol=1e-6)

    code, out, _ = cli("runs", "show", record.id, "--runs", "runs", capsys=capsys)
    assert code == 0 and "own class Net" in out and "the command line rebuilds it" in out

    # the file changes: every reader says so in one line, and still uses the file
    path.write_text(EXAMPLES_NET.replace("self.dropout2(x)", "self.dropout2(x)  # edited"))
    code, out, err = cli("runs", "show", record.id, "--runs", "runs", capsys=capsys)
    assert code == 0 and "changed since run" in err
    store.handle(record.id).load_resume()  # what --resume reads first
    assert "changed since run" in capsys.readouterr().err

    # the file is gone: fail clearly, or rebuild from the recorded copy on an explicit choice
    path.unlink()
    np.save(tmp_path / "x.npy", (np.random.default_rng(0).random((3, 28, 28)) * 255).astype(np.uint8))
    code, _, err = cli("predict", record.id, "x.npy", "--runs", "runs", capsys=capsys)
    assert code == 2 and "no longer exists" in err and "CONVLADDER_OWN_SOURCE=recorded" in err
    monkeypatch.setenv("CONVLADDER_OWN_SOURCE", "recorded")
    code, out, err = cli("predict", record.id, "x.npy", "--runs", "runs", "--json", capsys=capsys)
    assert code == 0, err
    probs = np.array([row["probs"] for row in json.loads(out)["images"]])
    with torch.no_grad():
        expected = torch.softmax(plain(((torch.tensor(np.load(tmp_path / "x.npy")).float() / 255)[:, None]
                                        - json.loads((folder / "env.json").read_text())["data_mean"])
                                       / json.loads((folder / "env.json").read_text())["data_std"]), 1)
    assert np.allclose(probs, expected.numpy(), atol=1e-4)


def test_python_api_class_instance_and_resnet(tmp_path, capsys):
    path = write(tmp_path, "resnet.py", RES_NET)
    ResNet = plain_import(path, "ResNet")
    runs = tmp_path / "runs"
    # a class: built with model_args and the run's seed; recorded with its whole file, rebuildable
    result = convladder.train(ResNet, model_args={"width": 4}, runs=runs, quiet=True, **SYNTH_KEYS)
    assert result.status == "completed" and result.final["test_acc"] > 30
    folder = runs / result.run_id
    own = json.loads((folder / "own_model.json").read_text())
    assert own["output"] == "logits" and own["initial_weights"] == "seeded" and own["args"] == {"width": 4}
    assert own["source_scope"] == "file" and (folder / "model_source.py").read_text() == RES_NET
    assert json.loads((folder / "config.json").read_text())["model"].startswith("python:")
    rebuilt = convladder.create_model(result.run_id, runs=runs, model=ResNet)
    assert type(rebuilt).__name__ == "ResNet" and not rebuilt.training

    # an instance: trained in place, its own initial weights; its constructor arguments are unknown
    net = ResNet(width=4)
    before = net.stem[0].weight.detach().clone()
    result = convladder.train(net, runs=runs, quiet=True, **SYNTH_KEYS)
    assert not torch.equal(before, net.stem[0].weight) and isinstance(net, ResNet)
    own = json.loads((runs / result.run_id / "own_model.json").read_text())
    assert own["initial_weights"] == "instance" and own["rebuild"] == "python" and own["args"] is None
    with pytest.raises(UserError, match="cannot be rebuilt here: .*instance.* model=ResNet"):
        convladder.create_model(result.run_id, runs=runs)
    back = convladder.create_model(result.run_id, runs=runs, model=ResNet(width=4))
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(back.logits(x), net.eval().logits(x), atol=1e-6)
    with pytest.raises(UserError, match="pass the class to train several seeds"):
        convladder.train(net, seeds=2, runs=False, **SYNTH_KEYS)
    # a class with a softmax output: trained on the log of its probabilities (it learns)
    Probs = plain_import(path, "Probs")
    result = convladder.train(Probs, model_args={"width": 4}, runs=False, quiet=True, **SYNTH_KEYS)
    assert result.final["test_acc"] > 30 and result.run_id is None


def test_ladder_and_sweep_find_the_file_next_to_them(tmp_path, monkeypatch):
    from convladder.executors.sweep import make_trials
    from convladder.executors.sweepspec import load_sweep
    from convladder.ladder.diff import check_ladder
    from convladder.ladder.ladder import load_ladder, parse_ladder

    folder = tmp_path / "study"
    folder.mkdir()
    write(folder, "nets.py", EXAMPLES_NET)
    write(folder, "lad.yaml", "name: own\nbase:\n  model: nets.py:Net\n  config: {model_args: {width: 4}}\nsteps:\n"
          "  - {name: start, change: the start}\n  - {name: wider, change: width 8, config: {model_args: {width: 8}}}\n")
    monkeypatch.chdir(tmp_path)  # not the ladder's folder: the path is relative to the file
    ladder = load_ladder("study/lad.yaml")
    ref = f"{(folder / 'nets.py').resolve()}:Net"
    assert [s.spec_text for s in ladder.steps] == [ref, ref]
    assert list(check_ladder(ladder)[1].things) == ["network: model_args"]
    assert ladder.steps[1].table().total_params == sum(
        p.numel() for p in plain_import(folder / "nets.py", "Net")(width=8).parameters())
    with pytest.raises(UserError, match="edit:` changes spec networks"):
        parse_ladder(f"base:\n  model: {ref}\nsteps:\n  - change: x\n    edit: [{{remove: dropout}}]\n")
    with pytest.raises(UserError, match="does not define 'Nope'"):
        parse_ladder(f"base:\n  model: {ref[:-3]}Nope\nsteps:\n  - change: x\n")

    write(folder, "sweep.yaml", "name: s\nmodel: nets.py:Net\nbudget: 50000\nbase: {dataset: synthetic}\n"
          "params:\n  model_args: {role: studied, values: [{width: 4}, {width: 8}]}\n")
    trials = make_trials(load_sweep("study/sweep.yaml"))
    assert [t.config["model"] for t in trials] == [ref, ref]
    assert [t.status for t in trials] == ["pending", "rejected"]  # 37,562 and 75,338 params against 50k


def test_report_and_runs_compare_of_an_own_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    write(tmp_path, "net.py", COURSE_NET)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("train", "--model", "net.py:Net", *SYNTH, "--runs", "runs", capsys=capsys)
    assert code == 0, err
    code, _, err = cli("train", "--model", "tiny6k", *SYNTH, "--runs", "runs", capsys=capsys)
    assert code == 0, err
    ids = {r.model: r.id for r in RunStore(tmp_path / "runs").list_runs()}
    own_id, spec_id = ids["net.py:Net"], ids["tiny6k"]
    code, out, _ = cli("runs", "compare", own_id, spec_id, "--runs", "runs", capsys=capsys)
    assert code == 0 and "net.py:Net" in out
    code, out, err = cli("report", own_id, "--runs", "runs", "-o", "r.html", capsys=capsys)
    assert code == 0, err
    html = (tmp_path / "r.html").read_text()
    assert "Network table" in html and "maxpool" in html and "cannot be rebuilt" not in html


@pytest.mark.mnist
@pytest.mark.slow
def test_mnist_subset_train_then_report_predict_export(tmp_path, monkeypatch, capsys):
    """The issue's check: `convladder train --model my_net.py:Net --epochs 1 --subset 10000`, then the readers."""
    from convladder.data.datasets import load_dataset

    try:
        mnist = load_dataset("mnist", fetch=False)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"MNIST is not cached ({exc})")
    write(tmp_path, "my_net.py", COURSE_NET)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("train", "--model", "my_net.py:Net", "--epochs", "1", "--subset", "10000", "--val-size", "1000",
                       "--threads", "2", "--runs", "runs", capsys=capsys)
    assert code == 0, err
    (record,) = RunStore(tmp_path / "runs").list_runs()
    assert record.final_test_acc > 70  # one epoch on 9k images (84 % measured); chance is 10 %
    np.save(tmp_path / "digits.npy", np.asarray(mnist.x_test[:200]))
    code, out, err = cli("predict", record.id, "digits.npy", "--json", "--runs", "runs", capsys=capsys)
    assert code == 0, err
    labels = [row["label"] for row in json.loads(out)["images"]]
    assert np.mean(np.array(labels) == np.asarray(mnist.y_test[:200])) > 0.65
    code, _, err = cli("report", record.id, "--runs", "runs", "-o", "report.html", capsys=capsys)
    assert code == 0 and (tmp_path / "report.html").stat().st_size > 10_000, err
    for module in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module)
    code, out, err = cli("export", record.id, "--format", "onnx", "-o", "net.onnx", "--runs", "runs", capsys=capsys)
    assert code == 0, err
    assert (tmp_path / "net.onnx").is_file() and f"run recorded {record.final_test_acc:.2f}%" in out


def test_lr_find_on_an_own_class(tmp_path, monkeypatch, capsys):
    write(tmp_path, "net.py", EXAMPLES_NET)
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("lr-find", "--model", "net.py:Net", "--model-args", '{"width": 4}', "--dataset", "synthetic",
                         "--steps", "20", "--runs", "runs", "val_size=256", "threads=1", capsys=capsys)
    assert code == 0, err
    assert "suggested lr" in out
    assert os.path.isdir(tmp_path / "runs" / "lrfind") and run_folders(tmp_path / "runs") == [tmp_path / "runs" / "lrfind"]


# -- a class defined in a notebook cell (issue 28) -------------------------------------------------------------

# what a student's kernel ran, cell by cell: imports, a constant, a helper, the class, then training code
CELLS = [
    "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\nimport numpy as np\n",
    "dropout_value = 0.05\nnp.random.seed(0)\nprint('setup done')\n\n\n"
    "def block(cin, cout):\n    return nn.Sequential(nn.Conv2d(cin, cout, 3, bias=False), nn.ReLU(), "
    "nn.BatchNorm2d(cout), nn.Dropout(dropout_value))\n",
    "class Net(nn.Module):\n    def __init__(self, width=8):\n        super().__init__()\n"
    "        self.c1 = block(1, width)\n        self.c2 = block(width, width)\n"
    "        self.trans = nn.Conv2d(width, 8, 1, bias=False)\n        self.out = nn.Conv2d(8, 10, 1, bias=False)\n"
    "        self.gap = nn.AvgPool2d(6)\n\n    def forward(self, x):\n"
    "        x = F.max_pool2d(self.c2(self.c1(x)), 2)\n        x = F.max_pool2d(self.trans(x), 2)\n"
    "        return F.log_softmax(self.gap(self.out(x)).view(-1, 10), dim=-1)\n\n\n"
    "net = Net()\nraise_if_run_again = open('/nonexistent/data.bin')  if False else None\n",
]
CELL_KEYS = dict(dataset="synthetic", epochs=1, subset=1024, val_size=128, threads=1, clean_train_eval=256,
                 batch_size=64)


def run_cells(cells: list[str], monkeypatch) -> dict:
    """Run cells the way IPython does: each compiled under its own cell file name, its text in linecache, the
    history in the shell (In[1], In[2], ...), everything in one __main__ namespace."""
    import linecache
    import types

    ns: dict = {"__name__": "__main__"}
    hist, names = [""], {}
    for number, text in enumerate(cells, 1):
        name = f"/tmp/ipykernel_4242/{abs(hash(text))}.py"
        monkeypatch.setitem(linecache.cache, name, (len(text), None, [ln + "\n" for ln in text.splitlines()], name))
        hist.append(text)
        names[name] = number
        exec(compile(text, name, "exec"), ns)  # noqa: S102 - the test's own cells
    shell = types.SimpleNamespace(history_manager=types.SimpleNamespace(input_hist_parsed=hist),
                                  compile=types.SimpleNamespace(_filename_map=names))
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    return ns


def test_a_notebook_class_is_recorded_and_rebuilt_without_the_kernel(tmp_path, monkeypatch, capsys):
    ns = run_cells(CELLS, monkeypatch)
    runs = tmp_path / "runs"
    result = convladder.train(ns["Net"], model_args={"width": 4}, runs=runs, quiet=True, **CELL_KEYS)
    folder = runs / result.run_id
    own = json.loads((folder / "own_model.json").read_text())
    source = (folder / "model_source.py").read_text()
    assert own["rebuild"] == "recorded" and own["source_scope"] == "cells" and own["args"] == {"width": 4}
    assert own["sha256"] == __import__("hashlib").sha256(source.encode()).hexdigest()
    # what the class needs, in the order it ran; nothing that runs (print, seeding, building, reading data)
    for kept in ("import torch.nn as nn", "import torch.nn.functional as F", "dropout_value = 0.05", "def block(",
                 "class Net(nn.Module):"):
        assert kept in source, kept
    assert source.index("dropout_value =") < source.index("def block") < source.index("class Net(")
    for left_out in ("print(", "np.random.seed", "net = Net()", "open(", "import numpy"):
        assert left_out not in source, left_out
    assert "In[1], In[2], In[3]" in source
    assert "cannot rebuild" not in capsys.readouterr().err  # nothing to warn about

    # the kernel is gone: no class in memory, no cells; the command line rebuilds it from the run
    monkeypatch.delitem(sys.modules, "IPython")
    del ns["Net"], ns["block"]
    np.save(tmp_path / "x.npy", (np.random.default_rng(0).random((3, 28, 28)) * 255).astype(np.uint8))
    code, out, err = cli("predict", result.run_id, str(tmp_path / "x.npy"), "--runs", str(runs), "--json",
                         capsys=capsys)
    assert code == 0, err
    assert len(json.loads(out)["images"]) == 3
    rebuilt = convladder.create_model(result.run_id, runs=runs)
    assert set(rebuilt.state_dict()) == set(load_file(str(folder / "model.safetensors")))

    # an edited copy is not run without asking; asking runs it (with a note)
    (folder / "model_source.py").write_text(source + "\n# edited\n")
    with pytest.raises(UserError, match="edited after .* CONVLADDER_OWN_SOURCE=recorded runs it"):
        convladder.create_model(result.run_id, runs=runs)
    monkeypatch.setenv("CONVLADDER_OWN_SOURCE", "recorded")
    assert convladder.create_model(result.run_id, runs=runs) is not None


def test_a_notebook_instance_with_default_arguments_is_rebuilt(tmp_path, monkeypatch):
    """convladder.train(Net(), ...) (the notebook's usual form): Net() from the recovered source is the same network."""
    ns = run_cells(CELLS, monkeypatch)
    result = convladder.train(ns["Net"](), runs=tmp_path, quiet=True, **CELL_KEYS)
    own = json.loads((tmp_path / result.run_id / "own_model.json").read_text())
    assert own["rebuild"] == "recorded" and own["args"] == {} and own["initial_weights"] == "instance"
    monkeypatch.delitem(sys.modules, "IPython")
    assert type(convladder.create_model(result.run_id, runs=tmp_path)).__name__ == "Net"


def test_helpers_defined_after_the_class_and_a_later_class_of_the_same_name(tmp_path, monkeypatch):
    """The kernel looks helpers up when they are called (a later cell's block() counts); the class is the one
    from its own cell even when a later cell defines another Net."""
    first_net = CELLS[2].split("net = Net()")[0]
    later = "First = Net\n\n\nclass Net(nn.Module):\n    def forward(self, x):\n        return x\n"
    ns = run_cells([CELLS[0], first_net, CELLS[1], later], monkeypatch)
    result = convladder.train(ns["First"], runs=tmp_path, quiet=True, **CELL_KEYS)
    source = (tmp_path / result.run_id / "model_source.py").read_text()
    own = json.loads((tmp_path / result.run_id / "own_model.json").read_text())
    assert own["rebuild"] == "recorded" and "def block(" in source and "self.c1 = block(1, width)" in source
    assert "return x\n" not in source and "First" not in source


def test_python_repl_inputs_are_read_in_order(tmp_path, monkeypatch):
    """Python's own REPL (3.13+) keeps each input as '<python-input-N>' in linecache; no IPython needed."""
    import linecache

    ns: dict = {"__name__": "__main__"}
    for number, text in enumerate([CELLS[0], CELLS[1], CELLS[2].split("net = Net()")[0]]):
        name = f"<python-input-{number}>"
        monkeypatch.setitem(linecache.cache, name, (len(text), None, [ln + "\n" for ln in text.splitlines()], name))
        exec(compile(text, name, "exec"), ns)  # noqa: S102 - the test's own inputs
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    result = convladder.train(ns["Net"], runs=tmp_path, quiet=True, **CELL_KEYS)
    own = json.loads((tmp_path / result.run_id / "own_model.json").read_text())
    assert own["rebuild"] == "recorded" and "<python-input-0>" in (tmp_path / result.run_id / "model_source.py").read_text()


def test_a_class_whose_source_is_gone_says_so_at_train_time(tmp_path, capsys):
    """A plain `python` REPL keeps no text: one notice at train time, and every later message names what works."""
    ns: dict = {"__name__": "__main__"}
    exec(compile(CELLS[0] + CELLS[1] + CELLS[2].split("net = Net()")[0], "<stdin>", "exec"), ns)  # noqa: S102
    result = convladder.train(ns["Net"], runs=tmp_path, quiet=True, **CELL_KEYS)
    err = capsys.readouterr().err
    assert err.count("cannot be recovered") == 1 and "result.report(model=Net)" in err
    assert "convladder.create_model(run_id, model=Net)" in err
    folder = tmp_path / result.run_id
    assert not (folder / "model_source.py").exists()
    with pytest.raises(UserError) as caught:
        convladder.create_model(result.run_id, runs=tmp_path)
    message = str(caught.value)
    assert "result.report(model=Net)" in message and f"convladder.create_model('{result.run_id}', model=Net)" in message
    assert "CONVLADDER_OWN_SOURCE" not in message  # there is no recorded source to offer
    report = result.report(runs_root=tmp_path).html  # a bare report: says what works, not cut mid-path
    assert "result.report(model=Net)" in report
    assert convladder.create_model(result.run_id, runs=tmp_path, model=ns["Net"]) is not None


def test_recovered_source_that_does_not_rebuild_alone_is_not_claimed(tmp_path, monkeypatch, capsys):
    """A class reading a global built by code (not a literal) in another cell: recorded, checked, refused."""
    cells = CELLS[:2] + ["scale = torch.tensor(2.0)\n", CELLS[2].replace("self.gap(self.out(x)).view",
                                                                         "(self.gap(self.out(x)) * scale).view")]
    ns = run_cells(cells, monkeypatch)
    result = convladder.train(ns["Net"], runs=tmp_path, quiet=True, **CELL_KEYS)
    own = json.loads((tmp_path / result.run_id / "own_model.json").read_text())
    assert own["rebuild"] == "python" and own["sha256"] and "NameError" in own["note"] and "scale" in own["note"]
    err = capsys.readouterr().err
    assert "does not run alone" in err and "result.report(model=Net)" in err


# -- messages that point at the fix (issue 28) ---------------------------------------------------------------

NO_SUPER = HEAD + "class Net(nn.Module):\n    def __init__(self):\n        self.c = nn.Conv2d(1, 10, 28)\n" \
                  "    def forward(self, x):\n        return self.c(x).view(-1, 10)\n"


def test_a_class_without_super_init_is_told_to_call_it(tmp_path, monkeypatch, capsys):
    write(tmp_path, "net.py", NO_SUPER)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("train", "--model", "net.py:Net", *SYNTH, "--runs", "runs", capsys=capsys)
    assert code == 2 and "super().__init__()" in err and "--model-args" not in err, err
    Net = plain_import(tmp_path / "net.py", "Net")
    with pytest.raises(UserError, match=r"does not call super\(\).__init__\(\)"):
        convladder.train(Net, runs=False, **SYNTH_KEYS)
    # from Python the arguments are model_args=, not a command-line flag
    write(tmp_path, "raises.py", BAD["constructor raises"][0])
    with pytest.raises(UserError, match="model_args=") as caught:
        convladder.train(plain_import(tmp_path / "raises.py", "Net"), runs=False, **SYNTH_KEYS)
    assert "--model-args" not in str(caught.value)


def test_a_py_file_without_its_class_is_told_the_form(tmp_path, monkeypatch, capsys):
    write(tmp_path, "student_net.py", RES_NET)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("train", "--model", "student_net.py", *SYNTH, "--runs", "runs", capsys=capsys)
    assert code == 2 and "name the class in it: student_net.py:" in err, err
    assert "its nn.Module classes: Block, ResNet, Probs" in err and "column" not in err
    code, _, err = cli("summary", "nets/other.py", capsys=capsys)
    assert code == 2 and "nets/other.py:Net" in err and "does not exist" in err


@pytest.mark.parametrize("key,expected", [("lr_rate", "'lr'"), ("runs_root", "'runs'"), ("run", "'runs'"),
                                          ("learning_rate", "'lr'"), ("epoch", "'epochs'")])
def test_misspelt_train_keywords_get_the_right_suggestion(key, expected, capsys):
    with pytest.raises(UserError) as caught:
        convladder.train("tiny8k", runs=False, **{key: 1})
    message = str(caught.value)
    assert f"did you mean {expected}" in message and "rotate" not in message
    assert len(message) < 200 and "clean_train_eval" not in message  # a few close keys, never the whole list
    option = "--" + key.replace("_", "-")  # the command line's options: the same matcher
    code, _, err = cli("train", option, "1", capsys=capsys)
    assert code == 2 and f"No such option {option}, did you mean --{expected.strip(chr(39))}?" in err, err


def test_potential_near_chance_is_not_meaningful():
    from convladder.train.result import RunResult, potential_meaningful, potential_shown

    assert not potential_meaningful(10.78) and potential_meaningful(99.0) and potential_meaningful(40.0)
    assert not potential_meaningful(60.0, classes=2)
    chance = RunResult(run_id="r", status="completed", params=1, epochs_done=1,
                       final={"train_acc": 10.78, "test_acc": 9.82}, best={}, gap=0.96, potential=99.04,
                       verdict="underfitting", train_acc_source="clean", wall_time_s=1.0, time_to_target_s=None)
    for text in (str(chance), chance.summary(), chance._repr_html_()):
        assert "not meaningful" in text and "99.04" not in text
    assert potential_shown(99.25, 99.8) == "99.25" and potential_shown(None, 50.0) == "-"
