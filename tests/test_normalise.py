"""The one image normalisation (convladder.data.normalise): every consumer calls it, none re-implements it."""

from __future__ import annotations

import re
import tokenize
from pathlib import Path

import numpy as np
import torch
from torch import nn

from convladder.data.normalise import normalise, normalise_images, to_unit

SRC = Path(__file__).resolve().parents[1] / "src" / "convladder"
MEAN, STD = 0.1307, 0.3081


def _pixels(n: int = 6) -> torch.Tensor:
    return torch.randint(0, 256, (n, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_values_and_forms() -> None:
    x = torch.tensor([[[0, 255]]], dtype=torch.uint8)
    assert to_unit(x).tolist() == [[[0.0, 1.0]]] and to_unit(x).dtype == torch.float32
    assert x.tolist() == [[[0, 255]]]  # the caller's pixels are untouched
    half = np.full((1, 2, 2), 0.5, np.float32)  # float pixels are already 0..1
    assert torch.equal(to_unit(half), torch.full((1, 2, 2), 0.5))
    got = normalise_images(x, 0.5, 0.25)
    assert got.shape == (1, 1, 1, 2) and torch.allclose(got, torch.tensor([[[[-2.0, 2.0]]]]))
    assert normalise_images(x[:, None], 0.5, 0.25).shape == (1, 1, 1, 2)  # a channel axis is kept


def test_every_consumer_normalises_the_same_way() -> None:
    """Training, predict, the ONNX wrapper, the report and the diagnostics give bit-identical network inputs."""
    from convladder.report.figures import TestData, normalised
    from convladder.serve.export import ProbsFromPixels
    from convladder.serve.predict import Predictor
    from convladder.serve.predict import to_unit as predict_to_unit

    px = _pixels()
    want = normalise(to_unit(px)[:, None], MEAN, STD)
    assert torch.equal(predict_to_unit(px.numpy()), to_unit(px)[:, None])
    assert torch.equal(normalised(TestData("t", px, torch.zeros(6), MEAN, STD), slice(None)), want)
    seen: list[torch.Tensor] = []

    class Spy(nn.Module):  # records what the network is given
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.detach().clone())
            return x.flatten(1)[:, :10]

    Predictor(Spy(), MEAN, STD).logits(predict_to_unit(px))
    ProbsFromPixels(Spy(), MEAN, STD)(to_unit(px)[:, None])
    assert len(seen) == 2 and all(torch.equal(s, want) for s in seen)


# "(x - mean) / std" written out anywhere but data/normalise.py is a second normalisation to drift apart
_COPY = re.compile(r"mean\)*\s*\)\s*/\s*[\w.(]*std\b|\.sub_\(\s*[\w.]*mean\s*\)\s*\.div_\(")


def _code_lines(path: Path) -> dict[int, str]:
    """Each line's code, strings and comments left out (docs may describe the formula)."""
    lines: dict[int, str] = {}
    with path.open("rb") as f:
        for tok in tokenize.tokenize(f.readline):
            if tok.type not in _PROSE:
                lines[tok.start[0]] = lines.get(tok.start[0], "") + tok.string
    return lines


_PROSE = {tokenize.STRING, tokenize.COMMENT, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}


def test_no_module_reimplements_the_normalisation() -> None:
    copies = [f"{p.relative_to(SRC)}:{i}: {code}" for p in sorted(SRC.rglob("*.py"))
              if p != SRC / "data" / "normalise.py"
              for i, code in _code_lines(p).items() if _COPY.search(code)]
    assert copies == [], "call convladder.data.normalise instead:\n" + "\n".join(copies)
