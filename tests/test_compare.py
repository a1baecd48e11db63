"""`vidpost compare` and its core (`vidpost.evaluation.compare`): the row syntax, identities of the paired columns
(a row against itself: Δ exactly 0, PSNR 99 dB; another seed count is another row), the quantisation and speed
columns, and the presets `shapes eval` / `distill eval` / `quantize eval` writing the same table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vidpost.evaluation.compare import RowSpec, evaluate, markdown, parse_row
from vidpost.shapes.splits import heldout_prompts

ROOT = Path(__file__).resolve().parents[1]
INT8 = str(ROOT / "configs" / "quant" / "w8a8-int8.yaml")


@pytest.fixture(scope="module")
def small_wan(tiny_wan_dir, tmp_path_factory):
    """The miniature with generation defaults of 9 frames at 32×32 in 2 steps (what the presets sample at)."""
    path = tmp_path_factory.mktemp("small") / "wan"
    shutil.copytree(tiny_wan_dir, path)
    meta = json.loads((path / "vidpost.json").read_text())
    meta["generation"] = {"num_frames": 9, "height": 32, "width": 32, "steps": 2, "fps": 8}
    (path / "vidpost.json").write_text(json.dumps(meta))
    return path


def test_row_syntax_and_its_one_line_errors():
    r = parse_row("shapes+runs/x/final@steps=2,guidance=1.5,prompts=prompt_user")
    assert (r.model, r.steps, r.guidance, r.prompts) == ("shapes+runs/x/final", 2, 1.5, "prompt_user")
    assert r.label == "shapes+runs/x/final@steps=2,guidance=1.5,prompts=prompt_user"
    assert parse_row("shapes").label == "shapes" and parse_row("a@label=b").label == "b"
    with pytest.raises(ValueError, match="'step=2' is not key=value with a key of"):
        parse_row("shapes@step=2")
    with pytest.raises(ValueError, match="guidance='inf' is not a finite number"):
        parse_row("shapes@guidance=inf")
    with pytest.raises(ValueError, match="prompts must be caption or prompt_user"):
        parse_row("shapes@prompts=other")


def test_a_row_against_itself_is_exactly_zero_and_settings_make_rows(tiny_wan_dir):
    items = heldout_prompts()[:2]
    size = "frames=9,height=32,width=32"
    rows = [parse_row(f"{tiny_wan_dir}@steps=2,{size}"), parse_row(f"{tiny_wan_dir}@steps=2,{size},label=again")]
    rows.append(parse_row(f"{tiny_wan_dir}@steps=3,{size}"))
    out = evaluate(rows, items, seeds=2, batch_size=4)
    assert [len(r["success"]) for r in out] == [4, 4, 4]
    assert out[1]["score"] == out[0]["score"] and out[1]["psnr"] == [99.0] * 4  # the same noises, the same videos
    assert out[2]["psnr"] != [99.0] * 4 and out[2]["evals_per_clip"] == 3 * (2 if out[2]["guidance"] > 1 else 1)
    table = markdown(out, ("quality", "attributes", "temporal", "speed", "quant"), 2, 2)
    again = [line for line in table.splitlines() if line.startswith("| again |")][0]
    assert "| +0.000 [+0.000, +0.000] | +0.0 |" in again and "| 99.0 |" in again
    with pytest.raises(ValueError, match="unknown column group 'speedy'"):
        markdown(out, ("speedy",))


def test_the_command_applies_a_recipe_and_the_presets_write_the_same_table(small_wan, tmp_path, capsys):
    from vidpost.cli import main

    args = ["compare", str(small_wan), f"{small_wan}@quant={INT8}", "--columns", "quant"]
    assert main([*args, "--limit", "1", "--seeds", "1", "--out", str(tmp_path / "c")]) == 0
    rows = json.loads((tmp_path / "c" / "results.json").read_text())["rows"]
    assert rows[0]["quant"]["ratio"] == 1.0 and rows[1]["quant"]["recipe"] == "w8a8-int8"
    assert rows[1]["quant"]["ratio"] < 1.0 and rows[1]["quant"]["path"] == "torchao:int8_dynamic"
    table = (tmp_path / "c" / "table.md").read_text()
    assert "| transformer weights |" in table and "torchao:int8_dynamic |" in table
    # `quantize eval` is the same rows under its own labels
    q = ["quantize", "eval", "--model", str(small_wan), "--recipes", INT8, "--limit", "1", "--seeds", "1"]
    assert main([*q, "--out", str(tmp_path / "q")]) == 0
    q_rows = json.loads((tmp_path / "q" / "results.json").read_text())["rows"]
    assert [r["label"] for r in q_rows] == ["unquantised", "w8a8-int8"]
    assert q_rows[1]["quant"] == {**rows[1]["quant"], "recipe": "w8a8-int8"}
    capsys.readouterr()


def test_distill_eval_is_compare_with_the_speed_columns(small_wan, tmp_path):
    from vidpost.cli import main

    args = ["distill", "eval", "--teacher", str(small_wan), "--student", str(small_wan), "--student-steps", "2"]
    assert main([*args, "--teacher-steps", "3", "--limit", "1", "--seeds", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["steps"] for r in rows] == [3, 2]
    table = (tmp_path / "table.md").read_text()
    assert "| transformer evals / clip |" in table and "| temporal |" in table


def test_an_enhancer_row_samples_the_rewrites_and_is_scored_against_the_scene(tiny_llm_dir, monkeypatch):
    from vidpost.evaluation import compare

    items = heldout_prompts()[:2]
    texts, records = compare.texts_for(RowSpec("shapes", enhance=str(tiny_llm_dir)), items)
    assert len(texts) == 2 and len(records) == 2 and all(isinstance(t, str) and t for t in texts)
    plain, none = compare.texts_for(RowSpec("shapes", prompts="prompt_user"), items)
    assert plain == [it["prompt_user"] for it in items] and none is None
