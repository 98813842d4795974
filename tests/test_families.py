"""The frontier's families (executors/families.py): notes and separable, one or two transitions, counted from the spec.

Small spaces and synthetic data only: the end-to-end test trains 3 runs of 1 epoch on 512 images.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from convladder.errors import UserError
from convladder.executors.families import family_of, family_text, generate
from convladder.executors.frontier import candidates
from convladder.executors.frontierspec import load_frontier, parse_frontier, spec_params

SMALL = {"before": [2], "after": [3, 4], "first": [4, 8], "width1": [8, 12], "squeeze": [8], "width2": [8, 12, 16]}


def cli(*args: str):
    from convladder.cli import build_app

    return CliRunner().invoke(build_app(), list(args))


def blocks(text: str) -> dict[str, str]:
    """'name[layers]' blocks of a spec text, by name."""
    return {part.split("[")[0]: part.split("[")[1] for part in text.split("] ") if "[" in part}


def test_the_notes_family_is_the_default_and_unchanged():
    spec = parse_frontier({"space": SMALL})
    assert spec.space["family"] == ["notes"] and spec.space["transitions"] == [1]
    pool, unfit = generate(spec.space)
    assert unfit == {"notes": 0} and {c.shape["family"] for c in pool} == {"notes"}
    assert "groups=" not in "".join(c.text for c in pool) and all("trans2" not in c.text for c in pool)
    assert family_text(2, 2, 4, 8, 6, 12, 0.05) == (  # the text the frontier generated before families existed
        "conv1[conv3x3(4, bias=false) relu bn dropout(0.05)] conv2[conv3x3(8, bias=false) relu bn dropout(0.05)] "
        "trans1[maxpool2x2 conv1x1(6, bias=false) relu bn] conv3[conv3x3(12, bias=false) relu bn dropout(0.05)] "
        "conv4[conv3x3(12, padding=1, bias=false) relu bn dropout(0.05)] out[gap conv1x1(10, bias=false) logsoftmax]")


def test_separable_blocks_are_depthwise_then_pointwise_and_counted_as_pytorch_counts():
    from convladder.spec.build import build_module
    from convladder.spec.notation import parse_spec

    text = family_text(before=2, after=3, first=6, width1=10, squeeze=8, width2=12, dropout=0.05, family="separable")
    b = blocks(text)
    assert b["conv1"] == "conv3x3(6, bias=false) relu bn dropout(0.05)"  # one input channel: a plain 3x3
    # depthwise over its input channels (conv1's 6, the squeeze's 8, then the block width), no bias, then a 1x1
    assert b["conv2"] == "conv3x3(6, groups=6, bias=false) conv1x1(10, bias=false) relu bn dropout(0.05)"
    assert b["conv3"].startswith("conv3x3(8, groups=8, bias=false) conv1x1(12, bias=false) relu bn")
    assert b["conv5"].startswith("conv3x3(12, padding=1, groups=12, bias=false) conv1x1(12, bias=false)")
    assert b["trans1"] == "maxpool2x2 conv1x1(8, bias=false) relu bn"
    assert text.endswith("out[gap conv1x1(10, bias=false) logsoftmax]")
    model = build_module(parse_spec(text))
    assert spec_params(text) == sum(p.numel() for p in model.parameters())
    dense = family_text(before=2, after=3, first=6, width1=10, squeeze=8, width2=12, dropout=0.05)
    assert spec_params(text) < spec_params(dense)  # what the family is for: fewer parameters per block
    with pytest.raises(UserError, match="not one the frontier generates"):
        family_text(2, 3, 6, 10, 8, 12, 0.0, family="mobilenet")


def test_two_transitions_sit_around_the_middle_blocks_and_unfit_layouts_are_counted():
    text = family_text(2, 2, 8, 12, 8, 12, 0.0, transitions=2, middle=2)
    order = [name for name in blocks(text)]
    assert order == ["conv1", "conv2", "trans1", "conv3", "conv4", "trans2", "conv5", "conv6", "out"]
    assert "conv6[conv3x3(12, padding=1" in text
    space = parse_frontier({"space": {**SMALL, "family": ["notes", "separable"], "transitions": [1, 2],
                                      "middle": [1, 3], "after": [2, 4]}}).space
    pool, unfit = generate(space)
    # 28 -2 -2 /2 12 -2x3 6 /2 3 -2x4: below 1x1 — so middle 3 with after 4 fits no width in either family
    assert unfit["notes"] > 0 and unfit["separable"] == unfit["notes"]
    assert {(c.shape["transitions"], c.shape.get("middle")) for c in pool} == {(1, None), (2, 1), (2, 3)}
    for c in pool[::7]:  # every kept network's count is the spec's own (the generator counts nothing itself)
        assert c.params == spec_params(c.text)
    fitting = [family_text(**c.shape, dropout=0.0) for c in pool if c.shape.get("middle") == 3]
    assert fitting and all(c.count("conv3x3") == 2 + 3 + 2 for c in fitting)  # middle 3 fits only with after 2


def test_candidates_take_turns_over_families_and_count_each():
    spec = parse_frontier({"trials": 4, "near": 0.5, "space": {**SMALL, "family": ["notes", "separable"]}})
    cands, stats = candidates(spec, 2500)
    fams = stats["families"]
    assert set(fams) == {"notes", "separable"} and [c.shape["family"] for c in cands].count("separable") == 2
    assert sum(f["generated"] for f in fams.values()) == stats["generated"]
    assert sum(f["in_budget"] for f in fams.values()) == stats["in_budget"]
    assert sum(f["near"] for f in fams.values()) == stats["near"] and fams["notes"]["chosen"] == 2
    assert all(1250 <= c.params <= 2500 and c.params == spec_params(c.text) for c in cands)
    assert fams["separable"]["in_budget"] > fams["notes"]["in_budget"]  # separable blocks are cheaper


@pytest.mark.parametrize("space, message", [
    ({"family": ["notes", "mobile"]}, r"fr.yaml:1: family 'mobile' is not one the frontier generates"),
    ({"transitions": [1, 3]}, "transitions takes 1 or 2"),
    ({"middle": [0]}, "middle takes whole numbers >= 1"),
])
def test_bad_family_keys_are_one_clear_error(tmp_path, space, message):
    path = tmp_path / "fr.yaml"
    path.write_text(json.dumps({"space": space}))
    with pytest.raises(UserError, match=message):
        load_frontier(path)


def test_dry_run_lists_each_familys_count_and_labels_the_chosen(tmp_path):
    path = tmp_path / "fam.yaml"
    path.write_text(json.dumps({"budgets": ["2k"], "trials": 2, "near": 0.5,
                                "space": {**SMALL, "family": "separable"}, "candidates": ["sep2k"]}))
    res = cli("frontier", str(path), "--dry-run")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    fam = next(line for line in lines if line.strip().startswith("family separable:"))
    assert " fit, " in fam and fam.endswith("2 chosen")
    listed = [line.split()[:3] for line in lines if line.split()[0].replace(",", "").isdigit()]
    assert [row[1] for row in listed] == ["separable", "separable", "candidate"]  # sep2k was named by the file
    assert listed[2] == ["1,976", "candidate", "sep2k"] and all("groups=" in line for line in lines[2:4])


def test_sep2k_is_the_separable_family_under_2k_with_rf_28(capsys):
    from convladder.analysis.table import summarize
    from convladder.cli import main
    from convladder.spec.registry import list_models, resolve_spec

    entry = list_models()["sep2k"]
    assert entry.text == family_text(2, 4, 10, 14, 10, 14, 0.05, family="separable")
    table = summarize(resolve_spec("sep2k"))
    assert table.total_params == entry.params == spec_params("sep2k") <= 2000 and table.rf_out >= 28
    assert "fresh seeds" in entry.description  # its measured figures say which seeds they come from
    with pytest.raises(SystemExit) as exc:
        main(["check", "sep2k", "--budget", "2k"])
    assert exc.value.code in (0, None), capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["check", "sep2k", "--budget", "1900"])  # the budget check reads the same count
    assert exc.value.code == 1 and "1,976 parameters, over the budget of 1,900" in capsys.readouterr().out


def test_sep5k_is_the_separable_family_under_5k_without_dropout():
    from convladder.analysis.table import summarize
    from convladder.spec.registry import list_models, resolve_spec

    entry = list_models()["sep5k"]
    assert entry.text == family_text(2, 4, 16, 26, 16, 26, 0.0, family="separable") and "dropout" not in entry.text
    table = summarize(resolve_spec("sep5k"))
    assert table.total_params == entry.params == spec_params("sep5k") <= 5000 and table.rf_out >= 28
    assert "fresh seeds 6-10" in entry.description


def test_summary_rows_and_tables_carry_the_family(tmp_path):
    from convladder.executors.frontier import format_table, run_frontier
    from convladder.report.frontierreport import frontier_rows

    base = {"dataset": "synthetic", "subset": 512, "val_size": 128, "epochs": 1, "batch_size": 64, "threads": 1,
            "clean_train_eval": 0, "augment": False}
    spec = parse_frontier({"name": "fam", "budgets": ["3k"], "trials": 2, "seeds": 1, "near": 0.5, "base": base,
                           "space": {**SMALL, "family": ["notes", "separable"], "after": [3]}})
    summary = run_frontier(spec, tmp_path / "runs")
    row = summary["budgets"][0]
    assert sorted(t["family"] for t in row["trials"]) == ["notes", "separable"]
    assert all(t["family"] == t["shape"]["family"] for t in row["trials"])
    assert row["winner"]["family"] in ("notes", "separable") and row["candidates"]["families"]["separable"]["chosen"] == 1
    assert f"        {row['winner']['family']}: " in format_table(summary)
    head, rows = frontier_rows(summary)
    assert rows[0][head.index("family")] == row["winner"]["family"]
    # a summary written before families existed: its winners are the notes' family, named candidates are theirs
    old = {"shape": {"before": 2, "after": 4, "first": 4}}
    assert family_of(old) == "notes" and family_of({"shape": {"given": "tiny8k"}}) == "candidate"
    assert family_of({"model": "x"}) == "–"
