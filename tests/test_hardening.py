"""Issue 30's vectors, one test each: YAML/JSON bombs, damaged bundles, outputs onto inputs, damaged run
folders. Each is refused with one UserError (or a note) quickly; none needs real data or training."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from convladder.errors import UserError


def laughs(levels: int, key: str = "title", width: int = 9, indent: str = "") -> str:
    """A billion-laughs YAML mapping: `key` holds width**levels strings built from `levels` anchors."""
    lines = [f'{indent}l0: &l0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"{indent}l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    lines.append(f"{indent}{key}: *l{levels}")
    return "\n".join(lines) + "\n"


def refused(fn, *args, match: str, seconds: float = 1.0) -> str:
    """fn(*args) raises one UserError matching `match` within `seconds`; returns the message."""
    start = time.perf_counter()
    with pytest.raises(UserError, match=match) as info:
        fn(*args)
    assert time.perf_counter() - start <= seconds
    text = str(info.value)
    assert "\n" not in text and len(text) < 600, text[:300]
    return text


# -- bounded parsing ------------------------------------------------------------------------------------------
# 9**7 = 4.8 million strings after expansion: old code loaded it in milliseconds and then expanded it in
# str()/json.dumps (a 9**9 document grew past 2.9 GB); the bound refuses it while composing
def test_yaml_bombs_are_refused_in_ladder_sweep_and_config_files(tmp_path: Path) -> None:
    from convladder.executors.sweepspec import load_sweep
    from convladder.ladder.ladder import load_ladder
    from convladder.train.config import load_config_file

    ladder = tmp_path / "bomb-ladder.yaml"
    ladder.write_text(laughs(7) + "base: {model: tiny8k}\nsteps: [{change: x}]\n")
    refused(load_ladder, str(ladder), match="aliases")
    sweep = tmp_path / "bomb-sweep.yaml"
    sweep.write_text("name: s\nmodel: tiny8k\nparams:\n  lr:\n" + laughs(7, key="values", indent="    "))
    refused(load_sweep, sweep, match="aliases")
    config = tmp_path / "bomb-config.yaml"
    config.write_text(laughs(7, key="tags"))
    refused(load_config_file, config, match="aliases")


def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path: Path) -> None:
    from convladder.ladder.ladder import load_ladder
    from convladder.train.config import load_config_file

    flow = tmp_path / "flow.yaml"
    flow.write_text("tags: " + "[" * 100_000 + "]" * 100_000 + "\n")
    refused(load_config_file, flow, match="nest")
    block = tmp_path / "block.yaml"  # indentation nesting, below libyaml's own flow limit
    block.write_text("".join(" " * i + f"k{i}:\n" for i in range(200)) + " " * 200 + "v: 1\n")
    refused(load_ladder, str(block), match="nested more than 64 levels")


def test_a_config_of_a_million_keys_is_refused_quickly_and_unknown_keys_are_few(tmp_path: Path) -> None:
    from convladder.ladder.ladder import load_ladder
    from convladder.train.config import load_config_file

    big = tmp_path / "big.yaml"
    big.write_text("".join(f"k{i}: {i}\n" for i in range(1_000_000)))
    refused(load_config_file, big, match="larger than")
    many = tmp_path / "many.yaml"  # under the size bound: the unknown keys are named, three of them
    many.write_text("base:\n  model: tiny8k\n  config:\n    epoch: 3\n"
                    + "".join(f"    key{i}: {i}\n" for i in range(5000)) + "steps: [{change: x}]\n")
    text = refused(load_ladder, str(many), match="and 4,998 more")
    assert "'epoch' (did you mean 'epochs'?)" in text and text.count("'key") <= 2


def test_long_model_args_are_cut_in_the_message() -> None:
    from convladder.spec.own import parse_model_args

    text = refused(parse_model_args, '{"width": ' + "x" * 120_000 + "}", match="characters")
    assert len(text) < 400
    text = refused(parse_model_args, '{"width": ' + "x" * 5_000 + "}", match="not valid JSON")
    assert "5,011 characters" in text
    refused(parse_model_args, "[" * 20_000 + "]" * 20_000, match="cannot be read|nests")
