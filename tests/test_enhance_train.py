"""Training the specialised prompt rewriter: SFT masking and overfitting, export through `Rewriter.from_pretrained`,
GRPO against the tiny Wan model with a weight-free video reward + a tiny-BERT intent reward, the Shapes pairs file."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from vidpost.config import load_config
from vidpost.enhance import Rewriter, RewriterConfig
from vidpost.enhance.train import (
    IGNORE_INDEX,
    SentenceEncoder,
    collate,
    completion_logprobs,
    encode_pair,
    epoch_batch,
    kl_k3,
    length_penalty,
    make_rewriter,
    read_pairs,
    reduce_logprobs,
    sample_rewrites,
    shapes_pairs,
)
from vidpost.pipelines.enhance_train import EnhanceGRPOConfig, EnhanceSFTConfig, main, train_grpo, train_sft
from vidpost.training.runner import TrainResult

CHAT = {"system_prompt": "the video", "few_shot": [["a cat", "the cat runs on grass"]], "max_new_tokens": 12}
PAIRS = [
    ("red circle right", "a red circle moves to the right"),
    ("dog grass", "the dog runs on grass"),
    ("cat left", "a cat moves to the left"),
    ("open sign", "the sign open light"),
]


@pytest.fixture
def no_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDPOST_CACHE", str(tmp_path / "vidpost-cache"))


def _rewriter(lm_dir, **chat) -> Rewriter:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(lm_dir)
    return make_rewriter(model, AutoTokenizer.from_pretrained(lm_dir), {**CHAT, **chat})


def _pairs_file(tmp_path, pairs) -> str:
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps({"prompt": p, "target": t, "reward_prompt": t}) + "\n" for p, t in pairs))
    return str(f)


# -- SFT pieces -----------------------------------------------------------------------------------------------------


def test_labels_mask_the_rendered_chat_and_keep_target_plus_end_of_turn(lm_dir):
    rw = _rewriter(lm_dir)
    tok = rw.tokenizer
    e = encode_pair(rw, "red circle right", "a red circle moves to the right")
    prompt_ids = tok(rw.render("red circle right"), add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert e.input_ids[:n] == prompt_ids and e.prompt_length == n  # exactly what inference feeds the model
    assert e.labels[:n] == [IGNORE_INDEX] * n
    assert e.labels[n:] == e.input_ids[n:]
    assert e.labels[-1] == tok.convert_tokens_to_ids("<|im_end|>") and e.labels[-1] in rw.eos_token_ids
    assert tok.decode(e.labels[n:-1]).strip() == "a red circle moves to the right"
    # The rendered chat holds the system prompt and the few-shot turn of the rewriter's config.
    assert "the video" in tok.decode(prompt_ids) and "the cat runs on grass" in tok.decode(prompt_ids)
    # Batches: right padding is never a label; prompt tokens carry no loss.
    short = encode_pair(rw, "cat left", "a cat")
    batch = collate([e, short], tok.pad_token_id)
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][1, len(short.input_ids) :] == IGNORE_INDEX).all()
    assert (batch["attention_mask"].sum(1) == torch.tensor([len(e.input_ids), len(short.input_ids)])).all()
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == (len(e.input_ids) - n) + (
        len(short.input_ids) - short.prompt_length
    )


def test_batch_order_depends_on_seed_and_step_only():
    seen = [i for s in range(4) for i in epoch_batch(6, 3, 7, s)]
    assert sorted(seen[:6]) == list(range(6)) and sorted(seen[6:]) == list(range(6))  # each epoch a permutation
    assert epoch_batch(6, 3, 7, 3) == epoch_batch(6, 3, 7, 3) and epoch_batch(6, 3, 7, 0) != epoch_batch(6, 3, 8, 0)


def _sft_cfg(tmp_path, lm_dir, name, pairs_file, *extra) -> EnhanceSFTConfig:
    return load_config(
        EnhanceSFTConfig,
        None,
        [
            f"output_dir={tmp_path / name}",
            f"model.path={lm_dir}",
            "model.device=cpu",
            f"rewriter={json.dumps(CHAT)}",
            f"data.path={pairs_file}",
            "lora.rank=8",
            "lora.alpha=16",
            "optim.lr=1e-2",
            "optim.warmup_steps=2",
            "train.batch_size=4",
            "checkpoint.every=0",
            *extra,
        ],
    )


def test_sft_overfits_and_the_export_loads_through_the_rewriter(tmp_path, lm_dir, no_user_cache):
    result = train_sft(_sft_cfg(tmp_path, lm_dir, "sft", _pairs_file(tmp_path, PAIRS), "train.max_steps=60"))
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 60 and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < 0.1 * losses[0], losses
    saved = json.loads((tmp_path / "sft" / "history.json").read_text())
    assert [h["loss"] for h in saved] == losses
    final = tmp_path / "sft" / "final"
    assert result.kind == "rewriter" and result.final == final and result.steps == 60 and result.extra["pairs"] == 4
    assert TrainResult.read(tmp_path / "sft").final == final  # the stage record
    assert (final / "model.safetensors").exists() and (final / "rewriter.yaml").exists()
    assert not any("lora" in k for k in load_file(str(final / "model.safetensors")))  # merged, plain weights
    config = RewriterConfig.from_yaml(final / "rewriter.yaml")
    assert config.system_prompt == "the video" and config.few_shot == [("a cat", "the cat runs on grass")]
    rw = Rewriter.from_pretrained(final, config=config, device="cpu", use_cache=False, repetition_penalty=1.0)
    out = rw.rewrite([p for p, _ in PAIRS])
    assert [r.text for r in out] == [t for _, t in PAIRS], [r.raw for r in out]
    assert all(r.ok for r in out)


def test_sft_full_fine_tuning_and_grad_accum_match(tmp_path, lm_dir, no_user_cache):
    pairs = _pairs_file(tmp_path, PAIRS)
    full = ("train.max_steps=2", "lora.enabled=false", "optim.lr=1e-3")
    a = train_sft(_sft_cfg(tmp_path, lm_dir, "a", pairs, *full))
    b = train_sft(_sft_cfg(tmp_path, lm_dir, "b", pairs, *full, "train.batch_size=2", "train.grad_accum=2"))
    torch.testing.assert_close(
        torch.tensor([h["loss"] for h in a.history]), torch.tensor([h["loss"] for h in b.history])
    )
    base = load_file(str(next(lm_dir.glob("*.safetensors"))))
    new = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    same = [k for k in base if torch.equal(base[k], new[k])]
    assert not same, same[:3]


# -- GRPO pieces ----------------------------------------------------------------------------------------------------


def test_sampled_rewrites_and_their_log_probs(lm_dir):
    rw = _rewriter(lm_dir)
    kw = dict(k=3, temperature=1.0, top_p=1.0, max_new_tokens=6, batch_size=4)
    s1 = sample_rewrites(rw, ["a cat", "red circle right"], seed=3, **kw)
    s2 = sample_rewrites(rw, ["a cat", "red circle right"], seed=3, **kw)
    assert len(s1) == 6 and [s.completion_ids for s in s1] == [s.completion_ids for s in s2]
    assert len({tuple(s.completion_ids) for s in s1}) > 1
    assert all(len(s.completion_ids) <= 6 for s in s1)
    # Log-probs in a padded batch equal those of each rewrite alone, and sum ≤ 0.
    pad = rw.tokenizer.pad_token_id
    tok_lp, mask = completion_logprobs(rw.model, s1, pad)
    alone = [completion_logprobs(rw.model, [s], pad) for s in s1]
    for i, (lp_i, m_i) in enumerate(alone):
        torch.testing.assert_close(tok_lp[i, : m_i.shape[1]], lp_i[0], atol=1e-5, rtol=1e-5)
    seq = reduce_logprobs(tok_lp, mask, "sum")
    assert (seq < 0).all()
    torch.testing.assert_close(reduce_logprobs(tok_lp, mask, "mean"), seq / mask.sum(1))
    assert torch.equal(kl_k3(tok_lp, tok_lp, mask), torch.zeros(6))
    assert (kl_k3(tok_lp, tok_lp - 0.3 * mask, mask) > 0).all()


def test_intent_encoder_and_length_penalty(bert_dir):
    enc = SentenceEncoder.from_pretrained(bert_dir)
    sim = enc.similarity(["a red circle", "a red circle"], ["a red circle", "the dog runs on grass"])
    torch.testing.assert_close(sim[0], torch.tensor(1.0))
    assert sim[1] < sim[0]
    assert torch.equal(length_penalty(["a b c", "a b c d e f"], 4), torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match="config.json"):
        SentenceEncoder.from_pretrained(bert_dir / "missing")


def _grpo_cfg(tmp_path, lm_dir, bert_dir, wan_dir, name, *extra) -> EnhanceGRPOConfig:
    return load_config(
        EnhanceGRPOConfig,
        None,
        [
            f"output_dir={tmp_path / name}",
            f"model.path={lm_dir}",
            "model.device=cpu",
            f"rewriter={json.dumps(CHAT)}",
            f"data.path={_pairs_file(tmp_path, PAIRS[:2])}",
            f"video.path={wan_dir}",
            "video.num_frames=5",
            "video.height=16",
            "video.width=16",
            "video.steps=2",
            "video.guidance_scale=1.0",
            "sampling.prompts_per_step=2",
            "sampling.k=2",
            "sampling.max_new_tokens=6",
            "rewards.video={temporal: 1.0}",
            f"rewards.intent_encoder={bert_dir}",
            "rewards.length_budget=3",
            "lora.rank=4",
            "optim.lr=1e-2",
            "optim.warmup_steps=0",
            "optim.max_grad_norm=0",
            "train.micro_batch=3",
            "checkpoint.every=0",
            *extra,
        ],
    )


def test_grpo_runs_updates_and_logs_reward_components(tmp_path, lm_dir, bert_dir, tiny_wan_dir, no_user_cache):
    cfg = _grpo_cfg(tmp_path, lm_dir, bert_dir, tiny_wan_dir, "grpo", "train.max_steps=2", "train.kl_beta=0.1")
    result = train_grpo(cfg)
    history = result.history
    assert len(history) == 2
    first = history[0]
    assert first["ratio_min"] == 1.0 and first["ratio_max"] == 1.0 and first["approx_kl"] == 0.0
    for key in ("reward/video", "reward/temporal", "reward/intent", "reward/length_penalty", "reward/fallback"):
        assert all(key in h and torch.isfinite(torch.tensor(h[key])) for h in history), key
    assert history[0]["kl"] == 0.0 and history[1]["kl"] > 0  # the policy left the reference after one update
    assert first["adv_abs"] > 0
    samples = [json.loads(line) for line in (tmp_path / "grpo" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 2 * 2 and {"rewrite", "intent", "temporal", "advantage"} <= set(samples[0])
    assert {s["prompt"] for s in samples} <= {p for p, _ in PAIRS[:2]}
    # Every weight of the exported model differs from the base where the LoRA acts (all linear layers).
    base = load_file(str(next(lm_dir.glob("*.safetensors"))))
    new = load_file(str(tmp_path / "grpo" / "final" / "model.safetensors"))
    linear = [k for k in base if "proj" in k]
    same = [k for k in linear if torch.equal(base[k], new[k])]
    assert linear and not same, same[:3]
    assert torch.equal(base["model.embed_tokens.weight"], new["model.embed_tokens.weight"])
    Rewriter.from_pretrained(tmp_path / "grpo" / "final", device="cpu", use_cache=False, max_new_tokens=4)


def test_grpo_resume_equals_uninterrupted(tmp_path, lm_dir, bert_dir, tiny_wan_dir, no_user_cache):
    common = ("rewards.intent_weight=0", "checkpoint.every=1")
    full = train_grpo(_grpo_cfg(tmp_path, lm_dir, bert_dir, tiny_wan_dir, "full", "train.max_steps=2", *common))
    train_grpo(_grpo_cfg(tmp_path, lm_dir, bert_dir, tiny_wan_dir, "part", "train.max_steps=1", *common))
    resumed = train_grpo(
        _grpo_cfg(tmp_path, lm_dir, bert_dir, tiny_wan_dir, "part", "train.max_steps=2", *common), resume="latest"
    )
    assert [h["reward"] for h in resumed.history] == [h["reward"] for h in full.history[1:]]
    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "final" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_grpo_refuses_dropout_and_groups_of_one_at_config_load(tmp_path, lm_dir, bert_dir, tiny_wan_dir):
    with pytest.raises(ValueError, match="dropout"):
        _grpo_cfg(tmp_path, lm_dir, bert_dir, tiny_wan_dir, "x", "lora.dropout=0.1")
    with pytest.raises(ValueError, match="sampling.k"):
        _grpo_cfg(tmp_path, lm_dir, bert_dir, tiny_wan_dir, "x", "sampling.k=1")


# -- data and command line ------------------------------------------------------------------------------------------


def test_shapes_pairs_file_has_train_scenes_only(tmp_path):
    from vidpost.shapes.captions import parse_caption
    from vidpost.shapes.splits import heldout_prompts, is_heldout, train_specs

    out = tmp_path / "pairs.jsonl"
    assert main(["data", "--out", str(out), "--n", "40", "--paraphrases", "2"]) == 0
    rows = read_pairs(out, ("prompt", "target", "reward_prompt"))
    captions = {it["caption"] for it in train_specs(40)}
    heldout = {it["caption"] for it in heldout_prompts()} | {it["prompt_user"] for it in heldout_prompts()}
    assert 40 < len(rows) <= 120 and {r["target"] for r in rows} == captions
    assert all(r["target"] == r["reward_prompt"] and r["prompt"] != r["target"] for r in rows)
    assert not any(is_heldout(r["target"]) or r["target"] in heldout or r["prompt"] in heldout for r in rows)
    for r in rows:
        parse_caption(r["target"])
    first = {r["target"]: r["prompt"] for r in reversed(rows)}  # each scene's first row is its prompt_user
    assert all(first[it["caption"]] == it["prompt_user"] for it in train_specs(40))
    assert rows == shapes_pairs(40, paraphrases=2)  # deterministic


def test_cli_sft_and_errors(tmp_path, lm_dir, capsys, no_user_cache):
    from vidpost.cli import main as vidpost_main

    pairs = _pairs_file(tmp_path, PAIRS)
    args = [f"output_dir={tmp_path / 'cli'}", f"model.path={lm_dir}", "model.device=cpu", f"data.path={pairs}"]
    args += [f"rewriter={json.dumps(CHAT)}", "train.max_steps=2", "train.batch_size=2"]
    args += ["checkpoint.every=1", "checkpoint.keep_last=1"]
    assert vidpost_main(["enhance", "train", "sft", *args]) == 0
    assert (tmp_path / "cli" / "final" / "config.json").exists()
    assert len(list((tmp_path / "cli" / "checkpoints").glob("step_*"))) == 1
    assert main(["sft", *args, "train.max_stpes=2"]) == 2
    assert "train.max_stpes" in capsys.readouterr().err
    assert main(["sft", *args[:3], f"data.path={tmp_path / 'none.jsonl'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["grpo", "--help-config"]) == 0 and "rewards.intent_encoder" in capsys.readouterr().out


def test_shapes_presets_validate():
    from pathlib import Path

    from vidpost.rewards.base import known_rewards

    root = Path(__file__).resolve().parents[1] / "configs" / "shapes"
    sft = load_config(EnhanceSFTConfig, root / "enhance-sft.yaml")
    grpo = load_config(EnhanceGRPOConfig, root / "enhance-grpo.yaml")
    RewriterConfig.from_dict(sft.rewriter)
    assert sft.rewriter == grpo.rewriter  # GRPO continues with the chat SFT trained on
    assert grpo.model.path == sft.output_dir + "/final" and grpo.lora.dropout == 0 and grpo.sampling.k > 1
    assert set(grpo.rewards.video) <= set(known_rewards())
