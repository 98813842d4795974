"""Colour data end to end: import in three layouts, per-channel statistics, augmentation for natural images,
training, report images, predict on PNG/JPEG, ONNX export and the server, on generated data in which colour
alone decides the class (every class has the same luminance), so any path that drops colour fails."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_util import run_cli
from convladder.data.datasets import import_dataset, load_dataset, pixel_stats
from convladder.data.normalise import normalise, normalise_images
from convladder.errors import UserError

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, what PIL's convert("L") uses
SPEC = "c1[conv3x3(8, padding=1) relu bn] t1[maxpool2x2] c2[conv3x3(16, padding=1) relu bn] out[gap conv1x1(3)]"


def colour_images(n: int, seed: int, size: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size, 3) uint8, labels 0..2: class k raises channel k and lowers the others so that the
    luminance stays what it was; brightness and texture are random and the same for every class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    shift = 60 * (np.eye(3) - LUMA[None, :])  # row k: channel k up, LUMA . shift[k] == 0
    x = rng.uniform(70, 180, (n, 1, 1, 1)) + rng.normal(0, 12, (n, size, size, 1)) + shift[y][:, None, None, :]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8), y


def save_npz(path: Path, layout: str = "nhwc", n: int = 1200, size: int = 12) -> dict[str, np.ndarray]:
    (xtr, ytr), (xte, yte) = colour_images(n, 0, size), colour_images(300, 1, size)
    form = {"nhwc": lambda a: a, "nchw": lambda a: a.transpose(0, 3, 1, 2), "nhw": lambda a: a[..., 0],
            "nhw1": lambda a: a[..., :1]}[layout]
    arrays = {"x_train": form(xtr), "y_train": ytr, "x_test": form(xte), "y_test": yte}
    np.savez(path, **arrays)
    return arrays


def picture(k: int, size: tuple[int, int] = (40, 56), seed: int = 7) -> np.ndarray:
    """An (H, W, 3) photo-like picture of class k (another size and aspect than the network's input)."""
    rng = np.random.default_rng(seed)
    base = 125 + rng.normal(0, 10, (*size, 1)) + 60 * (np.eye(3) - LUMA[None, :])[k]
    return np.clip(np.rint(base), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    """A small network trained 2 epochs on imported colour data: (runs root, run id, data set name)."""
    from convladder.runs.store import RunStore
    from convladder.train.config import TrainConfig
    from convladder.train.loop import train

    root = tmp_path_factory.mktemp("colour")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONVLADDER_HOME", str(root / "home"))
        save_npz(root / "colour.npz")
        import_dataset("colours", root / "colour.npz", log=lambda _: None)
        config = TrainConfig(model=SPEC, dataset="colours", epochs=2, batch_size=64, val_size=200, lr=0.1, seed=1,
                             threads=1, clean_train_eval=500, rotate=0, translate=0, scale=0, pad_crop=2, flip=True)
        result = train(config, RunStore(root / "runs"), progress=False)
        yield root / "runs", result.run_id, result
        # the cache stays set for the tests using the fixture (they run inside its context)


def test_import_in_three_layouts_gives_one_canonical_form(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVLADDER_HOME", str(tmp_path / "home"))
    arrays = {layout: save_npz(tmp_path / f"{layout}.npz", layout, n=40) for layout in ("nhwc", "nchw", "nhw", "nhw1")}
    got = {layout: import_dataset(f"c-{layout}", tmp_path / f"{layout}.npz", log=lambda _: None)[0]
           for layout in arrays}
    want = arrays["nhwc"]["x_train"].transpose(0, 3, 1, 2)
    for layout in ("nhwc", "nchw"):  # old code: "x_train has shape (40, 12, 12, 3); expected non-empty (N, H, W)"
        assert got[layout].x_train.shape == (40, 3, 12, 12) and np.array_equal(got[layout].x_train.numpy(), want)
        again = load_dataset(f"c-{layout}", fetch=False)  # from the cache (4-d IDX), verified
        assert np.array_equal(again.x_test.numpy(), got[layout].x_test.numpy()) and again.mean == got[layout].mean
    for layout in ("nhw", "nhw1"):  # grey stays (N, H, W) with one float mean/std, as before colour
        assert got[layout].x_train.shape == (40, 12, 12) and isinstance(got[layout].mean, float)
    assert np.array_equal(got["nhw"].x_train.numpy(), got["nhw1"].x_train.numpy())
    np.savez(tmp_path / "four.npz", x_train=np.zeros((4, 8, 8, 4), np.uint8), y_train=np.zeros(4, int),
             x_test=np.zeros((2, 8, 8, 4), np.uint8), y_test=np.zeros(2, int))
    with pytest.raises(UserError, match=r"four.npz\[x_train\].*\(4, 8, 8, 4\).*C = 1 or 3"):
        import_dataset("four", tmp_path / "four.npz", log=lambda _: None)


def test_keras_labels_and_gaps_in_the_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVLADDER_HOME", str(tmp_path / "home"))
    (xtr, ytr), (xte, yte) = colour_images(30, 0), colour_images(6, 1)
    np.savez(tmp_path / "keras.npz", x_train=xtr, y_train=ytr[:, None] + 1, x_test=xte, y_test=yte[:, None] + 1)
    said: list[str] = []
    splits = import_dataset("keras", tmp_path / "keras.npz", log=said.append)[0]  # old code: (30, 1) refused
    assert splits.y_train.tolist() == (ytr + 1).tolist() and splits.classes == 4
    assert any("labels should be 0..K-1" in line and "class(es) 0 " in line for line in said), said


def test_per_channel_statistics_and_normalisation(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVLADDER_HOME", str(tmp_path / "home"))
    arrays = save_npz(tmp_path / "c.npz", n=200)
    splits = import_dataset("stats", tmp_path / "c.npz", log=lambda _: None)[0]
    x = arrays["x_train"].astype(np.float64) / 255
    assert np.allclose(splits.mean, x.mean((0, 1, 2)), atol=1e-12) and np.allclose(splits.std, x.std((0, 1, 2)))
    meta = json.loads((tmp_path / "home" / "data" / "stats" / "meta.json").read_text())
    assert len(meta["mean"]) == 3 and meta["mean"] == list(splits.mean)
    out = normalise_images(splits.x_train, splits.mean, splits.std)
    assert out.shape == (200, 3, 12, 12)
    assert torch.allclose(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)  # each channel centred on its own
    assert torch.allclose(out.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    grey = torch.randint(0, 256, (5, 1, 6, 6), dtype=torch.uint8).float() / 255
    assert torch.equal(normalise(grey, 0.1307, 0.3081), (grey - 0.1307) / 0.3081)  # grey: the old arithmetic
    assert pixel_stats(arrays["x_train"][..., 0]) == pytest.approx((x[..., 0].mean(), x[..., 0].std()))


def test_pad_crop_and_flip_are_exact_and_keep_old_noise(tmp_path):
    from convladder.train.augment import AugmentParams, augment_from, noise_rows
    from convladder.train.config import build_config

    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)
    params = AugmentParams(0, 0, 0, 0, pad_crop=2, flip=True)
    assert noise_rows(params) == 3
    u = torch.tensor([[0.0, 0.99], [0.99, 0.5], [0.9, 0.1]])  # dy, dx (0..4 -> shift -2..2), flip below 0.5
    out = augment_from(x, params, u)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    assert torch.equal(out[0], padded[0, :, 0:5, 4:10])  # moved 2 down, 2 left; no flip
    assert torch.equal(out[1], padded[1, :, 4:9, 2:8].flip(-1))  # moved 2 up, flipped
    old = AugmentParams(7.0, 2.0, 0.1, 0.5)  # a run without the new keys reads the same 9 rows as before
    assert noise_rows(old) == 9 and noise_rows(AugmentParams(7.0, 2.0, 0.1, 0.5, pad_crop=4, flip=True)) == 12
    config = build_config(overrides=["pad_crop=4", "flip=true"])
    assert AugmentParams.from_config(config) == AugmentParams(7.0, 2.0, 0.1, 0.0, pad_crop=4, flip=True)
    with pytest.raises(UserError, match="pad_crop"):
        build_config(overrides=["pad_crop=-1"])


def test_training_keeps_colour_and_the_report_shows_it(colour_run):
    root, run_id, result = colour_run
    # chance is 33 %; a network given grey images (equal luminance for every class) stays near it
    assert result.final["test_acc"] > 90, result.final
    env = json.loads((root / run_id / "env.json").read_text())
    assert env["input_shape"] == [3, 12, 12] and len(env["data_mean"]) == 3 and len(env["data_std"]) == 3
    from convladder.report.figures import load_test_data, sample_grid
    from convladder.report.rundata import load_run

    data = load_test_data(load_run(root / run_id))  # what the report reads (old code: float() of a tuple)
    assert data is not None and data.colour and data.x.shape == (300, 3, 12, 12)
    figure = sample_grid(data, per_class=4)
    png = np.asarray(Image.open(io.BytesIO(figure.png())).convert("RGB")).astype(int)
    figure.close()
    # the three classes' tiles in their own colours: red-, green- and blue-dominant pixels all appear
    dominant = {int(np.argmax(p)) for p in png.reshape(-1, 3) if p.max() - p.min() > 40}
    assert dominant == {0, 1, 2} and "in their own colours" in figure.caption


def test_predict_on_colour_pictures(colour_run, tmp_path, capsys):
    root, run_id, _ = colour_run
    files = []
    for k in range(3):
        png, jpg = tmp_path / f"class{k}.png", tmp_path / f"class{k}.jpg"
        Image.fromarray(picture(k)).save(png)
        Image.fromarray(picture(k)).save(jpg, quality=95)
        files += [str(png), str(jpg)]
    code, out, err = run_cli(capsys, "predict", run_id, *files, "--json", "--runs", str(root))
    assert code == 0, err
    labels = [row["label"] for row in json.loads(out)["images"]]
    assert labels == [0, 0, 1, 1, 2, 2]  # old code: "is an image file, but the network takes 3x12x12 inputs"
    from convladder.serve.preprocess import decode_colour, fit_image

    fitted = fit_image(decode_colour(Path(files[0])), (12, 12))
    assert fitted.shape == (3, 12, 12) and fitted[0].mean() > fitted[1].mean() + 30  # still red
    batch = np.stack([picture(k, (12, 12)) for k in range(3)])  # (N, H, W, C), as PIL/numpy hold pictures
    np.save(tmp_path / "nhwc.npy", batch)
    np.save(tmp_path / "nchw.npy", batch.transpose(0, 3, 1, 2))
    code, out, err = run_cli(capsys, "predict", run_id, str(tmp_path / "nhwc.npy"), str(tmp_path / "nchw.npy"), "--json",
                             "--runs", str(root))
    rows = json.loads(out)["images"]
    assert code == 0 and [r["label"] for r in rows] == [0, 1, 2, 0, 1, 2] and rows[0]["probs"] == rows[3]["probs"]


def test_export_onnx_agrees_on_colour(colour_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from convladder.serve.export import export_onnx, ort_probs, ort_session
    from convladder.serve.predict import Predictor, load_run

    root, run_id, result = colour_run
    loaded = load_run(run_id, root)
    assert isinstance(loaded.mean, tuple) and loaded.input_shape == (3, 12, 12)
    report = export_onnx(loaded, tmp_path / "colour.onnx")
    assert report.source == "colours test set" and report.onnx_acc == pytest.approx(result.final["test_acc"], abs=0.02)
    x = np.stack([picture(k, (12, 12)).transpose(2, 0, 1) for k in range(3)]).astype(np.float32) / 255
    got = ort_probs(ort_session(tmp_path / "colour.onnx"), x)
    want = Predictor.from_run(loaded).probs(torch.from_numpy(x))
    assert np.abs(got - want).max() < 1e-4 and got.argmax(1).tolist() == [0, 1, 2]


def test_server_predicts_colour_pictures(colour_run):
    from convladder.serve.predict import load_run
    from convladder.serve.server import DigitApp

    root, run_id, _ = colour_run
    app = DigitApp(load_run(run_id, root))  # old code: "the draw-a-digit page draws 1-channel digits only"
    assert app.info()["input_shape"] == [3, 12, 12] and app.info()["classes"] == 3
    for k in range(3):
        buf = io.BytesIO()
        Image.fromarray(picture(k)).save(buf, format="PNG")
        res = app.predict(buf.getvalue())
        assert res["label"] == k and np.array(res["preview"]["pixels"]).shape == (3, 12, 12)
        preview = np.asarray(Image.open(io.BytesIO(__import__("base64").b64decode(res["preview"]["png"].split(",")[1]))))
        assert preview.shape == (12, 12, 3)  # the preview is in colour


def test_bn_ladder_is_one_change_on_any_data():
    from convladder.ladder.diff import check_ladder
    from convladder.ladder.ladder import load_ladder
    from convladder.train.models import create_model

    ladder = load_ladder("bn-colour")  # old code: no ladder 'bn-colour'
    assert [s.name for s in ladder.steps] == ["no-bn", "bn"]
    assert [list(d.things) for d in check_ladder(ladder)][1] == ["add bn"]  # BN is the only change
    for shape in ((1, 28, 28), (3, 32, 32), (3, 12, 12)):  # MNIST, CIFAR-10, the generated colour data
        for step in ladder.steps:
            net = create_model(step.spec_text, input_shape=shape)
            assert net(torch.zeros(2, *shape)).flatten(1).shape == (2, 10), (step.name, shape)


@pytest.mark.browser
def test_page_opens_a_colour_picture(colour_run, tmp_path):
    import browser_util

    reason = browser_util.chrome_unavailable_reason()
    if reason:
        pytest.skip(reason)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from convladder.serve.predict import load_run
    from convladder.serve.server import make_server, serve_in_thread

    root, run_id, _ = colour_run
    server = make_server(load_run(run_id, root), "127.0.0.1", 0)  # old code: refused (1-channel digits only)
    serve_in_thread(server)
    path = tmp_path / "blue.png"
    Image.fromarray(picture(2)).save(path)
    driver = browser_util.make_chrome_driver(1200, 700)
    try:
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
        wait = WebDriverWait(driver, 20)
        wait.until(lambda d: d.find_element(By.ID, "form").get_attribute("textContent").endswith("12×12, colour)"))
        assert driver.find_element(By.TAG_NAME, "h1").text == "Draw or open a picture"
        driver.find_element(By.ID, "file").send_keys(str(path))  # laid on the pad and sent like a drawing
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-predictions") == "1")
        assert driver.find_element(By.ID, "label").text == "2"
        assert not browser_util.broken_images(driver) and not browser_util.console_errors(driver)
    finally:
        driver.quit()
        server.shutdown()
