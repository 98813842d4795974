"""One way into training (issue 32 item 3): every entry runs the one setup of train/runner.py, and a fixed-seed
run through each way in gives, bit for bit, the numbers the code before the runner gave (tiny generated data,
CPU, 1 thread; `observe` writes them: `python tests/test_runner.py` prints the table PINNED holds)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from convladder.runs.store import RunStore
from convladder.train.config import TrainConfig
from convladder.train.device_data import synthetic_splits

TINY = ("c1[conv3x3(8, bias=false) relu bn dropout(0.05)] t1[maxpool2x2 conv1x1(8, bias=false) relu bn] "
        "c2[conv3x3(16, bias=false) relu bn] out[gap conv1x1(10, bias=false) logsoftmax]")
TIMING = ("epoch_time_s", "train_time_s", "train_images_per_s")


def tiny_config(**kw: Any) -> TrainConfig:
    base = dict(model=TINY, dataset="synthetic", epochs=2, batch_size=64, val_size=128, subset=1024, lr=0.1,
                seed=3, threads=1, clean_train_eval=256)
    return TrainConfig(**{**base, **kw})


def _runs(store: RunStore, results: list[Any]) -> list[dict[str, Any]]:
    """Per seed: the epoch rows as metrics.jsonl holds them (timing left out) and the result's figures."""
    out = []
    for r in results:
        rows = [{k: v for k, v in row.items() if k not in TIMING} for row in store.read_metrics(r.run_id)]
        out.append({"seed": r.seed, "rows": rows, "final": r.final, "best": r.best, "gap": r.gap,
                    "verdict": r.verdict})
    return out


def observe(case: str, tmp: Any) -> Any:
    """What a fixed-seed run through one way into training gives, with only names the code before had."""
    from convladder.train.loop import train, train_seeds

    torch.set_num_threads(1)
    store = RunStore(tmp)
    if case == "single":
        return _runs(store, [train(tiny_config(), store)])
    if case == "ema":
        return _runs(store, [train(tiny_config(ema=0.99), store)])
    if case in ("grouped", "streams"):  # streams on a CPU: each copy steps as its sequential run
        return _runs(store, train_seeds(tiny_config(seeds=2, batched=case), store)[0])
    if case == "lrfind":
        from convladder.train.lrfind import suggest_lr

        res = suggest_lr(tiny_config(), steps=12, data=synthetic_splits())
        return {"losses": res.losses, "suggested_lr": res.suggested_lr, "stopped": res.stopped}
    if case == "doctor":
        from convladder.doctor.run import doctor

        found = doctor(TINY, synthetic_splits(), tiny_config(), only=("overfit", "learning"), overfit_steps=15,
                       learn_steps=15)
        return {c.name: [row["loss"] for row in c.details] for c in found.checks}
    raise ValueError(case)


# Written from the code just before train/runner.py (a9f03ce^, this machine's CPU, torch 2.13.0, 1 thread) by
# `python tests/test_runner.py`: the runner must not move a single bit of any of these.
PINNED: dict[str, Any] = {'single': [{'seed': 3,
             'rows': [{'epoch': 1,
                       'lr': 0.009999999999999995,
                       'lr_last': 0.06916503744663625,
                       'train_loss': 2.1996241978236606,
                       'train_acc': 30.133928571428573,
                       'val_loss': 2.2292781156652115,
                       'val_acc': 16.666666666666668,
                       'test_loss': 2.230325937271118,
                       'test_acc': 13.8671875},
                      {'epoch': 2,
                       'lr': 0.062526335084453,
                       'lr_last': 0.0001,
                       'train_loss': 1.9697974068777901,
                       'train_acc': 54.35267857142857,
                       'val_loss': 2.0099385579427085,
                       'val_acc': 49.01960784313726,
                       'test_loss': 2.0222465991973877,
                       'test_acc': 44.3359375}],
             'final': {'train_acc': 42.96875,
                       'train_acc_seen': 54.35267857142857,
                       'train_acc_clean': 42.96875,
                       'val_acc': 49.01960784313726,
                       'test_acc': 44.3359375,
                       'epoch': 2},
             'best': {'epoch': 2, 'val_acc': 49.01960784313726, 'test_acc': 44.3359375, 'selected_by': 'val'},
             'gap': -1.3671875,
             'verdict': 'underfitting'}],
 'ema': [{'seed': 3,
          'rows': [{'epoch': 1,
                    'lr': 0.009999999999999995,
                    'lr_last': 0.06916503744663625,
                    'train_loss': 2.1996241978236606,
                    'train_acc': 30.133928571428573,
                    'val_loss': 2.2531154856962314,
                    'val_acc': 14.705882352941176,
                    'test_loss': 2.253328561782837,
                    'test_acc': 10.15625,
                    'live_val_loss': 2.2292781156652115,
                    'live_val_acc': 16.666666666666668,
                    'live_test_loss': 2.230325937271118,
                    'live_test_acc': 13.8671875},
                   {'epoch': 2,
                    'lr': 0.062526335084453,
                    'lr_last': 0.0001,
                    'train_loss': 1.9697974068777901,
                    'train_acc': 54.35267857142857,
                    'val_loss': 2.046001060336244,
                    'val_acc': 45.09803921568628,
                    'test_loss': 2.056264877319336,
                    'test_acc': 43.1640625,
                    'live_val_loss': 2.0099385579427085,
                    'live_val_acc': 49.01960784313726,
                    'live_test_loss': 2.0222465991973877,
                    'live_test_acc': 44.3359375}],
          'final': {'train_acc': 43.359375,
                    'train_acc_seen': 54.35267857142857,
                    'train_acc_clean': 43.359375,
                    'val_acc': 45.09803921568628,
                    'test_acc': 43.1640625,
                    'epoch': 2},
          'best': {'epoch': 2, 'val_acc': 45.09803921568628, 'test_acc': 43.1640625, 'selected_by': 'val'},
          'gap': 0.1953125,
          'verdict': 'underfitting'}],
 'grouped': [{'seed': 3,
              'rows': [{'epoch': 1,
                        'lr': 0.009999999999999995,
                        'lr_last': 0.06916503744663625,
                        'train_loss': 2.199925013950893,
                        'train_acc': 31.25,
                        'val_loss': 2.229772679946002,
                        'val_acc': 15.686274509803921,
                        'test_loss': 2.231300115585327,
                        'test_acc': 13.28125},
                       {'epoch': 2,
                        'lr': 0.062526335084453,
                        'lr_last': 0.0001,
                        'train_loss': 1.9673103604997908,
                        'train_acc': 52.79017857142857,
                        'val_loss': 2.0031213199391082,
                        'val_acc': 48.03921568627451,
                        'test_loss': 2.0174217224121094,
                        'test_acc': 41.9921875}],
              'final': {'train_acc': 42.578125,
                        'train_acc_seen': 52.79017857142857,
                        'train_acc_clean': 42.578125,
                        'val_acc': 48.03921568627451,
                        'test_acc': 41.9921875,
                        'epoch': 2},
              'best': {'epoch': 2, 'val_acc': 48.03921568627451, 'test_acc': 41.9921875, 'selected_by': 'val'},
              'gap': 0.5859375,
              'verdict': 'underfitting'},
             {'seed': 4,
              'rows': [{'epoch': 1,
                        'lr': 0.009999999999999995,
                        'lr_last': 0.06916503744663625,
                        'train_loss': 2.157953534807478,
                        'train_acc': 28.794642857142858,
                        'val_loss': 2.126560285979626,
                        'val_acc': 17.647058823529413,
                        'test_loss': 2.1408684253692627,
                        'test_acc': 14.84375},
                       {'epoch': 2,
                        'lr': 0.062526335084453,
                        'lr_last': 0.0001,
                        'train_loss': 1.9016557421003069,
                        'train_acc': 47.544642857142854,
                        'val_loss': 1.9656358606675093,
                        'val_acc': 37.254901960784316,
                        'test_loss': 2.0027732849121094,
                        'test_acc': 33.984375}],
              'final': {'train_acc': 32.421875,
                        'train_acc_seen': 47.544642857142854,
                        'train_acc_clean': 32.421875,
                        'val_acc': 37.254901960784316,
                        'test_acc': 33.984375,
                        'epoch': 2},
              'best': {'epoch': 2, 'val_acc': 37.254901960784316, 'test_acc': 33.984375, 'selected_by': 'val'},
              'gap': -1.5625,
              'verdict': 'underfitting'}],
 'streams': [{'seed': 3,
              'rows': [{'epoch': 1,
                        'lr': 0.009999999999999995,
                        'lr_last': 0.06916503744663625,
                        'train_loss': 2.1996241978236606,
                        'train_acc': 30.133928571428573,
                        'val_loss': 2.2292781156652115,
                        'val_acc': 16.666666666666668,
                        'test_loss': 2.230325937271118,
                        'test_acc': 13.8671875},
                       {'epoch': 2,
                        'lr': 0.062526335084453,
                        'lr_last': 0.0001,
                        'train_loss': 1.9697974068777901,
                        'train_acc': 54.35267857142857,
                        'val_loss': 2.0099385579427085,
                        'val_acc': 49.01960784313726,
                        'test_loss': 2.0222465991973877,
                        'test_acc': 44.3359375}],
              'final': {'train_acc': 42.96875,
                        'train_acc_seen': 54.35267857142857,
                        'train_acc_clean': 42.96875,
                        'val_acc': 49.01960784313726,
                        'test_acc': 44.3359375,
                        'epoch': 2},
              'best': {'epoch': 2, 'val_acc': 49.01960784313726, 'test_acc': 44.3359375, 'selected_by': 'val'},
              'gap': -1.3671875,
              'verdict': 'underfitting'},
             {'seed': 4,
              'rows': [{'epoch': 1,
                        'lr': 0.009999999999999995,
                        'lr_last': 0.06916503744663625,
                        'train_loss': 2.1568828310285295,
                        'train_acc': 29.575892857142858,
                        'val_loss': 2.1260274251302085,
                        'val_acc': 17.647058823529413,
                        'test_loss': 2.1405727863311768,
                        'test_acc': 14.84375},
                       {'epoch': 2,
                        'lr': 0.062526335084453,
                        'lr_last': 0.0001,
                        'train_loss': 1.8995722361973353,
                        'train_acc': 47.65625,
                        'val_loss': 1.9639591890222885,
                        'val_acc': 37.254901960784316,
                        'test_loss': 2.002805471420288,
                        'test_acc': 33.984375}],
              'final': {'train_acc': 33.203125,
                        'train_acc_seen': 47.65625,
                        'train_acc_clean': 33.203125,
                        'val_acc': 37.254901960784316,
                        'test_acc': 33.984375,
                        'epoch': 2},
              'best': {'epoch': 2, 'val_acc': 37.254901960784316, 'test_acc': 33.984375, 'selected_by': 'val'},
              'gap': -0.78125,
              'verdict': 'underfitting'}],
 'lrfind': {'losses': [2.32252836227417, 2.2991974353790283, 2.3171751499176025, 2.312138319015503,
                       2.2967092990875244, 2.298522472381592, 2.30354380607605, 2.300013542175293,
                       2.2945196628570557, 2.2515244483947754, 2.2019026279449463, 2.186070203781128],
            'suggested_lr': 0.000657933224657568,
            'stopped': 'max lr reached'},
 'doctor': {'overfit': [2.3198623657226562, 2.283724784851074, 2.23783540725708, 2.1877641677856445,
                        2.136592388153076, 2.083695888519287, 2.0278217792510986, 1.969925880432129,
                        1.9085866212844849, 1.8433341979980469, 1.777428150177002, 1.7120836973190308,
                        1.6484071016311646, 1.5858213901519775, 1.5220214128494263],
            'learning': [2.32252836227417, 2.297656297683716, 2.3081836700439453, 2.2798519134521484,
                         2.248357057571411, 2.214790105819702, 2.2029247283935547, 2.1736960411071777,
                         2.1585586071014404, 2.1048624515533447, 2.095133066177368, 2.106948137283325,
                         2.01849102973938, 2.0163731575012207, 2.0093722343444824]}}


@pytest.mark.parametrize("case", ["single", "ema", "grouped", "streams", "lrfind", "doctor"])
def test_each_way_in_gives_the_numbers_of_the_code_before(case: str, tmp_path: Any) -> None:
    assert observe(case, tmp_path) == PINNED[case]


def test_every_way_into_training_runs_the_one_setup(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """train, train_seeds (one by one and batched), train_batched, resume, lr-find, the doctor and an executor's
    job all validate, resolve words, pick the device and threads in runner.begin, and read data in load_data."""
    import convladder.train.runner as runner
    from convladder.doctor.run import doctor
    from convladder.executors.base import InProcessExecutor, make_job
    from convladder.train.loop import resume, train, train_batched, train_epochs, train_seeds
    from convladder.train.lrfind import suggest_lr

    calls: list[str] = []
    begin, load = runner.begin, runner.load_data
    monkeypatch.setattr(runner, "begin", lambda *a, **k: (calls.append("begin"), begin(*a, **k))[1])
    monkeypatch.setattr(runner, "load_data", lambda *a, **k: (calls.append("data"), load(*a, **k))[1])
    store = RunStore(tmp_path)
    data = synthetic_splits()
    cfg = tiny_config(epochs=1, subset=256, val_size=64, clean_train_eval=0)

    def ran(what: Any) -> list[str]:
        calls.clear()
        what()
        return list(calls)

    assert ran(lambda: train(cfg, store, data=data)) == ["begin", "data"]
    assert ran(lambda: train_seeds(cfg.replace(seeds=2), store, data=data)) == ["begin"] + ["begin", "data"] * 2
    assert ran(lambda: train_batched(cfg.replace(seeds=2, batched="grouped"), store, data=data)) == ["begin", "data"]
    assert ran(lambda: train_batched(cfg.replace(seeds=1), store, data=data)) == ["begin"]  # None: one by one
    epochs = train_epochs(cfg.replace(epochs=2), store, data=data)
    next(epochs)
    epochs.close()  # stopped after epoch 1, resumable
    stopped = store.list_runs(status="stopped")[0].id
    assert ran(lambda: resume(stopped, store, data=data)) == ["begin", "data"]
    assert ran(lambda: suggest_lr(cfg, steps=6, data=data)) == ["begin", "data"]
    assert ran(lambda: doctor(TINY, data, cfg, only=("init",))) == ["begin", "data"]
    job = make_job(cfg.replace(dataset="synthetic").to_dict(), label="job")
    assert ran(lambda: InProcessExecutor().map([job], tmp_path / "jobs")) == ["begin", "data"]


def test_report_of_a_result_is_handed_in_not_imported() -> None:
    """RunResult.report draws with report/ (a later layer): the root package hands the maker in on import."""
    import convladder  # noqa: F401 - sets it
    from convladder.report.runreport import report_of_run
    from convladder.train import result

    assert result._report_maker is not None and result._report_maker.__module__ == "convladder"
    assert report_of_run.__module__ == "convladder.report.runreport"
    assert not hasattr(result, "RunReport")


if __name__ == "__main__":  # print PINNED from the code this runs on
    import pprint
    import tempfile

    pinned = {}
    for case in ("single", "ema", "grouped", "streams", "lrfind", "doctor"):
        with tempfile.TemporaryDirectory() as tmp:
            pinned[case] = observe(case, tmp)
    assert all(math.isfinite(r["rows"][-1]["train_loss"]) for c in ("single", "ema") for r in pinned[c])
    print(pprint.pformat(pinned, width=116, sort_dicts=False, compact=True))
