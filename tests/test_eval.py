"""`vidpost eval`: prompt files, generation + scoring, failures recorded not raised, summary statistics that match
the per-video CSV, the self-contained HTML report, and `--compare` deltas / win rates."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from vidpost.evaluation.report import ranking_sentence, summary_table_rows
from vidpost.media.video_io import probe_video, write_video
from vidpost.pipelines.eval import (
    compare_runs,
    load_prompts,
    load_reward_spec,
    main,
    score_videos,
    stats,
    summarise,
    t_quantile,
    wilson,
)
from vidpost.rewards.base import Reward, RewardOutput, WeightedReward, build_reward, reward_bounds
from vidpost.shapes.splits import heldout_prompts
from vidpost.shapes.world import SceneSpec, render

GEN = ["--frames", "9", "--height", "32", "--width", "32", "--steps", "2", "--no-progress"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], col: str) -> list[float]:
    return [float(r[col]) for r in rows if r[col] != ""]


def check_summary_matches_csv(out: Path, rewards: list[str]) -> dict:
    """summary.json's n / mean / std / CI per reward and component equal what scores.csv recomputes."""
    rows = read_csv(out / "scores.csv")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_videos"] == len(rows)
    assert summary["n_ok"] == sum(r["status"] == "ok" for r in rows)
    for name in rewards:
        x = column(rows, name)
        s = summary["rewards"][name]
        assert s["n"] == len(x)
        assert s["mean"] == pytest.approx(sum(x) / len(x), rel=1e-12, abs=1e-12)
        assert s["std"] == pytest.approx(float(np.std(x, ddof=1)), rel=1e-9, abs=1e-12)
        half = t_quantile(len(x) - 1) * s["std"] / math.sqrt(len(x))
        lo, hi = reward_bounds(name) or (-math.inf, math.inf)  # the interval is clipped to the reward's range
        expected = [max(s["mean"] - half, lo), min(s["mean"] + half, hi)]
        assert s["ci95"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert s.get("ci95_clipped", False) == (expected != [s["mean"] - half, s["mean"] + half])
    for comp, s in summary["components"].items():
        x = column(rows, comp)
        assert s["n"] == len(x) and s["mean"] == pytest.approx(sum(x) / len(x), rel=1e-12, abs=1e-12)
    return summary


def check_html(out: Path, thumbs: list[str]) -> str:
    """The report shows an animated GIF (a data URI) for exactly the video ids `thumbs` (with repeats)."""
    html = (out / "report.html").read_text()
    found = re.findall(r'<img class="thumb" data-id="([^"]+)"[^>]*src="data:image/gif;base64,', html)
    assert sorted(found) == sorted(thumbs)
    # Self-contained: every image is a data URI, nothing refers to a file next to the report.
    assert all(src.startswith("data:") for src in re.findall(r'<img[^>]*src="([^"]*)"', html))
    assert html.count("data:image/png;base64,") >= 2  # histograms + box plot
    assert "<style>" in html
    return html


# ------------------------------------------------------------------------------------------------ unit tests


def test_load_prompts_formats_and_errors(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("# a comment\na red circle\n\n  a blue square  \n")
    assert load_prompts(txt) == [
        {"id": "000", "prompt": "a red circle", "seed": None},
        {"id": "001", "prompt": "a blue square", "seed": None},
    ]
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"id": "x", "caption": "c1", "seed": 7}\n{"prompt": "p2"}\n')
    assert load_prompts(jl) == [{"id": "x", "prompt": "c1", "seed": 7}, {"id": "001", "prompt": "p2", "seed": None}]
    js = tmp_path / "p.json"
    js.write_text(json.dumps(["s0", {"id": 5, "prompt": "s1"}, "s2"]))
    assert [it["id"] for it in load_prompts(js, limit=2)] == ["000", "5"]
    held = load_prompts("shapes-heldout", limit=3)
    ref = heldout_prompts()[:3]
    assert held == [{"id": r["id"], "prompt": r["caption"], "seed": r["seed"]} for r in ref]
    for bad in ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', '{"id": "a/b", "prompt": "x"}\n', "{}\n"):
        jl.write_text(bad)
        with pytest.raises(ValueError):
            load_prompts(jl)
    with pytest.raises(ValueError, match="does not exist"):
        load_prompts(tmp_path / "nope.txt")


def test_reward_spec_from_names_and_config(tmp_path):
    assert load_reward_spec("temporal, motion", None) == {"temporal": {}, "motion": {}}
    cfg = tmp_path / "r.yaml"
    cfg.write_text("rewards:\n  motion: 0.5\n  clip: {path: /w/clip, weight: 2}\n")
    assert load_reward_spec("motion,temporal", cfg) == {"motion": 0.5, "temporal": {}}
    assert load_reward_spec(None, cfg) == {"motion": 0.5, "clip": {"path": "/w/clip", "weight": 2}}
    with pytest.raises(ValueError):
        load_reward_spec(None, None)


def test_statistics_and_paired_comparison():
    for df, t in ((1, 12.7062), (2, 4.3027), (5, 2.5706), (10, 2.2281), (30, 2.0423), (120, 1.9799), (1000, 1.9623)):
        assert t_quantile(df) == pytest.approx(t, abs=1e-4)
    s = stats([1.0, 2.0, 3.0, None, float("nan")])
    assert (s["n"], s["mean"], s["std"]) == (3, 2.0, 1.0)
    assert s["ci95"] == pytest.approx([2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)], abs=1e-5)
    b = stats([1, 0, 1, 1])
    assert b["binary"] and b["wilson95"] == pytest.approx(list(wilson(3, 4)))
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0
    this = [{"id": str(i), "prompt": "p", "scores": {"r": v}, "total": v} for i, v in enumerate([1.0, 2.0, 3.0, 5.0])]
    other = [{"id": str(i), "prompt": "p", "scores": {"r": v}, "total": v} for i, v in enumerate([0.0, 2.0, 4.0])]
    other.append({"id": "9", "prompt": "p", "scores": {"r": 1.0}, "total": 1.0})
    c = compare_runs(this, other, ["r"])
    r = c["rewards"]["r"]
    assert (r["n"], r["wins"], r["ties"], r["losses"], r["win_rate"]) == (3, 1, 1, 1, 0.5)
    assert r["delta"] == pytest.approx(0.0) and r["mean_this"] == 2.0 and r["mean_other"] == 2.0
    assert c["only_this"] == ["3"] and c["only_other"] == ["9"] and c["n_common"] == 3


class FlakyReward(Reward):
    """Raises on any batch holding an all-black video; otherwise scores the mean brightness."""

    name = "flaky"
    uses_prompts = False

    def _score(self, videos, prompts):
        if (videos.flatten(1).amax(1) == 0).any():
            raise RuntimeError("cannot score a black video")
        return RewardOutput(videos.mean(dim=(1, 2, 3, 4)), {"max": videos.flatten(1).amax(1)})


def test_the_headline_ranks_by_the_primary_reward_and_never_sums_scales():
    """The worse model on the verifier must not win because an unbounded reward (motion ≈ 1–13) dominates a sum."""
    this, other = [], []
    for i in range(16):
        this.append(
            {
                "id": str(i),
                "prompt_id": str(i),
                "prompt": "p",
                "scores": {"verifier": 0.75 + 0.01 * (i % 3), "motion": 2.0 + i % 2},
            }
        )
        other.append(
            {
                "id": str(i),
                "prompt_id": str(i),
                "prompt": "p",
                "scores": {"verifier": 0.45 + 0.01 * (i % 4), "motion": 6.0 + i % 3},
            }
        )
    c = compare_runs(this, other, ["verifier", "motion"])
    assert set(c["rewards"]) == {"verifier", "motion"}  # no unweighted total
    assert c["rewards"]["motion"]["delta"] < -3  # motion alone prefers the other run
    assert c["ranking"]["winner"] == "this" and c["ranking"]["decided_by"] == "verifier"
    sentence = ranking_sentence(c["ranking"], ("sft", "base"))
    assert sentence.startswith("Ranking by verifier, then motion: sft ranks above base, decided by verifier (Δ +0.29")
    assert ranking_sentence(compare_runs(other, this, ["verifier", "motion"])["ranking"], ("base", "sft")).startswith(
        "Ranking by verifier, then motion: sft ranks above base"
    )
    summary = summarise(this, {"verifier": 1.0, "motion": 1.0})
    assert "total" not in summary and [r["reward"] for r in summary_table_rows(summary)] == ["verifier", "motion"]


def test_a_reward_failing_on_one_video_fails_only_that_video(tmp_path):
    records = []
    for i, level in enumerate([0.5, 0.0, 0.25]):
        path = write_video(tmp_path / f"{i}.mp4", torch.full((3, 5, 16, 16), level), fps=8)
        records.append({"id": str(i), "prompt_id": str(i), "prompt": "", "seed": None, "video": str(path)})
    rewards = WeightedReward(
        {"flaky": FlakyReward(), "temporal": build_reward("temporal")}, {"flaky": 2, "temporal": 1}
    )
    score_videos(records, rewards, weighted=True, batch_size=3, thumbs_dir=tmp_path / "thumbs", progress=False)
    assert [r["status"] for r in records] == ["ok", "reward_error", "ok"]
    assert "cannot score a black video" in records[1]["error"] and records[1]["scores"]["flaky"] is None
    assert records[1]["scores"]["temporal"] is not None and records[1]["total"] is None
    ok = records[0]
    assert ok["scores"]["flaky"] == pytest.approx(0.5, abs=0.01)
    assert ok["total"] == pytest.approx(2 * ok["scores"]["flaky"] + ok["scores"]["temporal"])
    assert sorted(p.name for p in (tmp_path / "thumbs").iterdir()) == ["0.gif", "1.gif", "2.gif"]


# ------------------------------------------------------------------------------------------------ end to end


def test_generate_score_rescore_and_compare_with_itself(tiny_wan_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moves right\na blue square\na green triangle moves up\n")
    gen = tmp_path / "gen"
    rc = main(["--prompts", str(prompts), "--model", str(tiny_wan_dir), "--rewards", "temporal,motion"]
              + ["--out", str(gen), "--batch-size", "4", "--seeds", "2", "--seed", "10", *GEN])  # fmt: skip
    assert rc == 0
    ids = [f"00{i}_s{k}" for i in range(3) for k in range(2)]  # two videos per prompt
    for i in ids:
        info = probe_video(gen / "videos" / f"{i}.mp4")
        assert (info.num_frames, info.height, info.width) == (9, 32, 32)
    rows = read_csv(gen / "scores.csv")
    assert [r["id"] for r in rows] == ids and all(r["status"] == "ok" for r in rows)
    assert [r["prompt_id"] for r in rows] == ["000", "000", "001", "001", "002", "002"]
    assert [int(r["seed"]) for r in rows] == [10, 100013, 11, 100014, 12, 100015]
    assert rows[0]["motion"] != rows[1]["motion"]  # different seeds, different videos
    assert {"temporal", "motion", "temporal/frame_to_prev", "motion/flow"} <= set(rows[0])
    assert "total" not in rows[0]  # no weights given: rewards of different scales are not summed
    check_summary_matches_csv(gen, ["temporal", "motion"])
    html = check_html(gen, ids)
    assert html.count('<div class="prompt"') == 3  # one grid row per prompt, its two videos in it
    assert (gen / "summary.md").read_text().count("| temporal |") == 1
    assert (gen / "plots" / "box.png").exists() and (gen / "plots" / "hist_motion.png").exists()

    # The output folder re-scores as it is (the <id>_s<k> files found, the seeds rebuilt from prompts.jsonl): same
    # files, same scores; compared with the first run: Δ 0, win rate ½.
    again = tmp_path / "again"
    rc = main(["--prompts", str(gen / "prompts.jsonl"), "--videos", str(gen / "videos"), "--rewards", "temporal,motion"]
              + ["--out", str(again), "--compare", str(gen), "--no-progress"])  # fmt: skip
    assert rc == 0
    rows2 = read_csv(again / "scores.csv")
    for a, b in zip(rows, rows2):
        assert (a["seed"], a["temporal"], a["motion"]) == (b["seed"], b["temporal"], b["motion"])
    comparison = json.loads((again / "compare.json").read_text())
    assert comparison["n_common"] == 6 and set(comparison["rewards"]) == {"temporal", "motion"}
    assert comparison["ranking"] == {"order": ["temporal", "motion"], "winner": None, "decided_by": None}
    for c in comparison["rewards"].values():
        assert (c["n"], c["delta"], c["win_rate"], c["ties"]) == (6, 0.0, 0.5, 6)
    html = check_html(again, ids + ids)  # both runs' videos side by side
    assert 'id="compare"' in html and "win rate" in html


def _write_jsonl(path: Path, items: list[dict]) -> None:
    path.write_text("".join(json.dumps({"id": it["id"], "caption": it["caption"]}) + "\n" for it in items))


def test_videos_dir_with_failures_verifier_and_compare(tmp_path):
    items = heldout_prompts()[:5]
    prompts = tmp_path / "prompts.jsonl"
    _write_jsonl(prompts, items)
    clips = {it["id"]: render(SceneSpec.from_dict(it["spec"]), seed=it["seed"]) for it in items[:4]}
    ids = [it["id"] for it in items]
    dir_a, dir_b = tmp_path / "clips_a", tmp_path / "clips_b"
    for i in ids[:3]:
        write_video(dir_a / f"{i}.mp4", clips[i], fps=8)
    (dir_a / f"{ids[3]}.mp4").write_bytes(np.random.default_rng(0).bytes(4096))  # corrupt; ids[4]: missing

    a = tmp_path / "a"
    rewards = ["--rewards", "verifier,temporal,motion", "--no-progress"]
    assert main(["--prompts", str(prompts), "--videos", str(dir_a), "--out", str(a), *rewards]) == 0
    rows = read_csv(a / "scores.csv")
    assert [r["id"] for r in rows] == ids
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "unreadable", "missing"]
    assert rows[3]["error"] and rows[4]["error"] and rows[3]["verifier"] == "" and rows[4]["motion"] == ""
    summary = check_summary_matches_csv(a, ["verifier", "temporal", "motion"])
    assert (summary["n_ok"], summary["n_failed"]) == (3, 2)
    assert summary["rewards"]["verifier"]["mean"] > 0.9  # the renders are what their captions say
    assert summary["components"]["verifier/success"]["binary"]
    assert [f["id"] for f in summary["failures"]] == ids[3:]
    html = check_html(a, ids[:3])
    failures = html[html.index('id="failures"') :]
    for i, status in ((ids[3], "unreadable"), (ids[4], "missing")):
        assert i in failures and status in failures
    for it in items:
        assert it["id"] in html and it["caption"] in html

    # Run B: clip 0 frozen (less motion), clip 1 re-rendered with another seed, clip 2 the same, clip 3 now valid.
    write_video(dir_b / f"{ids[0]}.mp4", np.repeat(clips[ids[0]][:, :1], 17, axis=1), fps=8)
    write_video(dir_b / f"{ids[1]}.mp4", render(SceneSpec.from_dict(items[1]["spec"]), seed=5), fps=8)
    write_video(dir_b / f"{ids[2]}.mp4", clips[ids[2]], fps=8)
    write_video(dir_b / f"{ids[3]}.mp4", clips[ids[3]], fps=8)
    cfg = tmp_path / "rewards.json"
    cfg.write_text(json.dumps({"motion": 0.5, "verifier": {"weight": 2.0}, "temporal": 1}))
    b = tmp_path / "b"
    argv = ["--prompts", str(prompts), "--videos", str(dir_b), "--reward-config", str(cfg), "--out", str(b)]
    assert main([*argv, "--compare", str(a), "--no-progress"]) == 0
    rows_b = read_csv(b / "scores.csv")
    assert [r["status"] for r in rows_b] == ["ok", "ok", "ok", "ok", "missing"]
    for r in rows_b[:4]:
        expected = 2 * float(r["verifier"]) + float(r["temporal"]) + 0.5 * float(r["motion"])
        assert float(r["total"]) == pytest.approx(expected, rel=1e-9)
    check_summary_matches_csv(b, ["motion", "verifier", "temporal"])
    summary_b = json.loads((b / "summary.json").read_text())
    assert summary_b["weighted"] and summary_b["total"]["n"] == 4
    assert "| weighted total | " in (b / "summary.md").read_text()
    comparison = json.loads((b / "compare.json").read_text())
    assert set(comparison["rewards"]) == {"motion", "verifier", "temporal"}  # A gave no weights: no `total`
    assert comparison["ranking"]["order"] == ["motion", "verifier", "temporal"]  # the config's order
    by_id = {r["id"]: r for r in rows}
    for name, c in comparison["rewards"].items():
        pairs = [(float(r[name]), float(by_id[r["id"]][name])) for r in rows_b if r[name] and by_id[r["id"]][name]]
        diffs = [x - y for x, y in pairs]
        assert c["n"] == len(pairs) == 3
        assert c["delta"] == pytest.approx(sum(diffs) / len(diffs), abs=1e-12)
        wins = sum(d > 0 for d in diffs) + 0.5 * sum(d == 0 for d in diffs)
        assert c["win_rate"] == pytest.approx(wins / len(diffs))
    assert comparison["rewards"]["motion"]["delta"] < 0  # the frozen clip has no motion
    assert comparison["rewards"]["motion"]["ties"] >= 1  # clip 2 is the same file content
    check_html(b, ids[:4] + ids[:3])  # side by side: B's 4 readable clips, A's 3

    # Compare a finished run with itself, without re-scoring: Δ 0 and win rate ½ everywhere.
    assert main(["--out", str(a), "--compare", str(a)]) == 0
    comparison = json.loads((a / "compare.json").read_text())
    assert set(comparison["rewards"]) == {"verifier", "temporal", "motion"}
    for c in comparison["rewards"].values():
        assert (c["n"], c["delta"], c["win_rate"]) == (3, 0.0, 0.5)
    assert read_csv(a / "scores.csv") == rows  # re-reporting leaves the scores alone
    assert main(["--out", str(a)]) == 0 and not (a / "compare.json").exists()


def test_user_errors_exit_2(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("x\n")
    (tmp_path / "v").mkdir()
    out = str(tmp_path / "o")
    cases = [
        (
            ["--prompts", str(prompts), "--videos", str(tmp_path / "v"), "--rewards", "no_such_reward"],
            "unknown reward",
        ),
        (["--model", "nowhere", "--rewards", "motion"], "--prompts"),
        (
            ["--prompts", str(tmp_path / "missing.txt"), "--videos", str(tmp_path / "v"), "--rewards", "motion"],
            "exist",
        ),
        (["--prompts", str(prompts), "--videos", str(tmp_path / "v")], "no rewards"),
        (["--prompts", str(prompts), "--videos", str(tmp_path / "v"), "--rewards", "clip"], "clip"),  # no weights
        ([], "--videos"),
    ]
    for argv, message in cases:
        assert main([*argv, "--out", out, "--no-progress"]) == 2
        assert message in capsys.readouterr().err


def test_registered_as_a_cli_command():
    from vidpost.cli import COMMANDS

    assert COMMANDS["eval"][0] == "vidpost.pipelines.eval"
