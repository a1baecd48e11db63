"""The miniature Shapes rewriter (built from random weights) and the `vidpost enhance eval` table command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vidpost.enhance import Rewriter
from vidpost.enhance.miniature import REWRITER_SETTINGS, build_miniature, resolve_miniature, shapes_vocabulary
from vidpost.pipelines import enhance_eval, enhance_train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def miniature_dir(tmp_path_factory):
    return build_miniature("shapes", tmp_path_factory.mktemp("mini") / "init", hidden_size=32, layers=1, heads=2)


def test_vocabulary_covers_heldout_words_one_token_each(miniature_dir):
    from transformers import AutoTokenizer

    from vidpost.shapes.splits import heldout_prompts

    tok = AutoTokenizer.from_pretrained(miniature_dir)
    vocab = set(shapes_vocabulary())
    item = heldout_prompts()[0]
    for text in (item["caption"], item["prompt_user"]):
        words = text.lower().replace(",", " ").split()
        known = [w for w in words if w in vocab]
        ids = tok([" ".join(known)], add_special_tokens=False)["input_ids"][0]
        assert len(ids) == len(known), (text, tok.convert_ids_to_tokens(ids))
    # unknown text still tokenizes without <unk> (character fallback)
    ids = tok(["zebra-42!"], add_special_tokens=False)["input_ids"][0]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids).replace(" ", "") == "zebra-42!"


def test_miniature_is_a_chat_model_the_rewriter_loads(miniature_dir, tmp_path):
    rw = Rewriter.from_pretrained(miniature_dir, cache_dir=tmp_path / "c", device="cpu", **REWRITER_SETTINGS)
    rendered = rw.render("red dot going right")
    assert rendered.startswith("<|im_start|>system\nrewrite the user prompt")
    assert rendered.endswith("<|im_start|>user\nred dot going right<|im_end|>\n<|im_start|>assistant\n")
    (out,) = rw.rewrite(["red dot going right"])
    assert out.original == "red dot going right"


def test_resolve_miniature_builds_once(tmp_path):
    with pytest.raises(ValueError, match="unknown miniature"):
        resolve_miniature("miniature:nope", tmp_path / "x")
    assert resolve_miniature("/some/folder", tmp_path) == "/some/folder"


def test_sft_from_miniature_then_enhance_eval_table(tmp_path, monkeypatch, capsys):
    """A few full-weight SFT steps from `miniature:shapes`, then the table on 2 held-out scenes at 2 steps."""
    monkeypatch.setenv("VIDPOST_CACHE", str(tmp_path / "cache"))
    import vidpost.enhance.miniature as mini

    real_build = mini.build_miniature
    monkeypatch.setattr(mini, "build_miniature", lambda name, out: real_build(name, out, hidden_size=32, layers=1))
    out = tmp_path / "run"
    rc = enhance_train.main(
        [
            "sft",
            "--config",
            str(ROOT / "configs/shapes/enhance-sft-mini.yaml"),
            f"output_dir={out}",
            "train.max_steps=3",
            "train.batch_size=4",
            "data.shapes_n=8",
            "checkpoint.every=0",
        ]
    )
    assert rc == 0
    hist = json.loads((out / "history.json").read_text())
    assert len(hist) == 3 and all(h["loss"] > 0 for h in hist)
    # the init weights were trained (full fine-tuning, not LoRA)
    from safetensors.torch import load_file

    a = load_file(out / "init" / "model.safetensors")
    b = load_file(out / "final" / "model.safetensors")
    assert all(not (a[k] == b[k]).all() for k in a if k.endswith("q_proj.weight"))

    res = tmp_path / "table"
    rc = enhance_eval.main(
        ["--enhancers", str(out / "final"), "/no/such/rewriter", "--limit", "2", "--seeds", "1", "--steps", "2"]
        + ["--out", str(res)]
    )
    assert rc == 0
    data = json.loads((res / "results.json").read_text())
    labels = [r["row"] for r in data["rows"]]
    assert labels[0] == "user prompts (raw)" and labels[-1] == "canonical captions (ceiling)"
    assert labels[1].startswith("rewriter") and len(labels) == 3
    assert len(data["skipped"]) == 1 and "/no/such/rewriter" in data["skipped"][0]
    row = data["rows"][1]
    assert len(row["rewrites"]) == 2 and 0.0 <= row["fallback"] <= 1.0
    for r in data["rows"]:
        assert r["n"] == 2 and 0.0 <= r["score"] <= 1.0
    # rows differ only in text: the ceiling row generated from the captions
    assert "| canonical captions (ceiling) | 2 |" in (res / "results.md").read_text()
    assert len(list(res.glob("*.png"))) == 3


def test_enhance_cli_uses_the_folders_rewriter_yaml(miniature_dir, tmp_path, monkeypatch):
    """`vidpost enhance --enhancer FOLDER` serves a trained rewriter with the chat settings it was trained with."""
    import shutil

    import yaml

    from vidpost.enhance.miniature import SYSTEM_PROMPT
    from vidpost.enhance.rewriter import Rewrite
    from vidpost.pipelines import enhance as cli

    folder = tmp_path / "m"
    shutil.copytree(miniature_dir, folder)
    (folder / "rewriter.yaml").write_text(yaml.safe_dump(REWRITER_SETTINGS))
    seen = []

    def fake(self, prompts, **kw):
        seen.append(self.config)
        return [Rewrite(p, p) for p in prompts]

    monkeypatch.setattr(Rewriter, "rewrite", fake)
    assert cli.main(["--enhancer", str(folder), "--no-cache", "red dot"]) == 0
    assert seen[-1].system_prompt == SYSTEM_PROMPT and seen[-1].repetition_penalty == 1.0
    assert cli.main(["--enhancer", str(folder), "--no-cache", "--max-new-tokens", "5", "red dot"]) == 0
    assert seen[-1].max_new_tokens == 5 and seen[-1].system_prompt == SYSTEM_PROMPT


def test_shipped_shapes_rewriter_maps_heldout_user_prompts_to_captions(tmp_path):
    """The rewriter in assets/shapes/rewriter (trained by configs/shapes/enhance-sft-mini.yaml on train scenes only)
    recovers most held-out scenes' canonical captions from their user-style prompts (78% of 32 in results/)."""
    from pathlib import Path

    from vidpost.shapes.splits import heldout_prompts

    folder = Path(__file__).resolve().parents[1] / "assets" / "shapes" / "rewriter"
    rw = Rewriter.from_pretrained(folder, cache_dir=tmp_path, use_cache=False, device="cpu")
    assert rw.config.system_prompt == REWRITER_SETTINGS["system_prompt"]  # its own rewriter.yaml
    items = heldout_prompts()[:16]
    out = rw.rewrite([it["prompt_user"] for it in items])
    exact = sum(enhance_eval.normalise(o.text) == enhance_eval.normalise(it["caption"]) for o, it in zip(out, items))
    assert exact >= 10, [(o.text, it["caption"]) for o, it in zip(out, items)]
    assert all(o.ok for o in out)
