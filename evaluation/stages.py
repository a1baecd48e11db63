"""Evaluation of a staged run (`vidpost run`): each stage's model generates the held-out prompts (the same noise
per prompt for every stage) and is scored — the rewards of `eval.rewards`, the guard metric, the Shapes verifier
where the prompts carry scene specs, seconds per video — and the run's report (markdown table, HTML with a GIF of
the stages side by side).

`state` is what a stage hands to the next (attributes model, lora, enhancer, inference); `ecfg` the pipeline's
`eval` section (prompts, limit, rewards, guard, sizes, steps, guidance, shift, batch_size, grid_videos); `cfg` the
pipeline config (name, eval).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vidpost.evaluation.generate import default_dtype, sample_batches
from vidpost.evaluation.settings import resolve_settings, user_settings
from vidpost.outputs import atomic_file, write_bytes, write_text
from vidpost.seeding import prompt_seed, video_seed


def eval_items(ecfg: Any) -> list[dict[str, Any]]:
    """Held-out items: {id, prompt (what a user types), caption (canonical text, or None), spec (or None), seed (the
    prompt's own seed, else its index: `vidpost.seeding`)}."""
    if ecfg.prompts == "shapes-heldout":
        from vidpost.shapes.splits import heldout_prompts

        raw = heldout_prompts()
        items = [
            {
                "id": it["id"],
                "prompt": it["prompt_user"],
                "caption": it["caption"],
                "spec": it["spec"],
                "seed": it["seed"],
            }
            for it in raw
        ]
    else:
        from vidpost.evaluation.prompts import load_prompts

        items = [
            {
                "id": it["id"],
                "prompt": it["prompt"],
                "caption": None,
                "spec": None,
                "seed": video_seed(prompt_seed(it["seed"], 0, i), 0),
            }
            for i, it in enumerate(load_prompts(ecfg.prompts))
        ]
    return items[: ecfg.limit] if ecfg.limit else items


@torch.no_grad()
def evaluate(state: Any, ecfg: Any, out: Path, device: str) -> dict[str, Any]:
    """Generate and score the held-out prompts with `state` → the stage's report row (also `out/eval.json`)."""
    from safetensors.torch import save_file

    from vidpost.evaluation.shapes import verify_rows
    from vidpost.media.video_io import contact_sheet
    from vidpost.models import load, resolve_model_path
    from vidpost.models.inference import apply_inference
    from vidpost.rewards.base import build_rewards

    items = eval_items(ecfg)
    adapter = load(state.model, lora=state.lora, device=device, dtype=default_dtype(device))
    handle = apply_inference(adapter, state.inference)
    settings = resolve_settings(resolve_model_path(state.model), adapter, **user_settings(ecfg))
    rewards = build_rewards(ecfg.rewards) if ecfg.rewards else None
    guard = build_rewards(ecfg.guard) if ecfg.guard else None

    user = [it["prompt"] for it in items]
    rewrites = None
    if state.enhancer:
        from vidpost.enhance import Rewriter

        rewriter = Rewriter.from_pretrained(None if state.enhancer in ("zero-shot", "default") else state.enhancer)
        rewrites = [r.text for r in rewriter.rewrite(user, progress=True)]
        del rewriter
    sets = {"user": rewrites or user}
    if all(it["caption"] for it in items):
        sets = {"caption": [it["caption"] for it in items], **sets}
    judge = [it["caption"] or it["prompt"] for it in items]
    row: dict[str, Any] = {"n": len(items), "settings": settings.sample_kwargs()}
    grid = None
    for name, texts in sets.items():
        videos, seconds = [], 0.0
        seeds = [it["seed"] for it in items]
        for _, v, dt in sample_batches(adapter, texts, seeds, settings, batch_size=ecfg.batch_size):
            seconds += dt
            videos.append(v.float().cpu())
        videos_t = torch.cat(videos)
        metrics: dict[str, Any] = {"seconds_per_video": seconds / len(items)}
        if rewards is not None:
            r = rewards(videos_t, judge)
            metrics["reward"] = float(r.score.mean())
            metrics |= {f"reward.{k}": float(v.float().mean()) for k, v in r.components.items()}
        if guard is not None:
            metrics["guard"] = float(guard(videos_t, judge).score.mean())
        if all(it["spec"] for it in items):
            ver = verify_rows(videos_t, [it["spec"] for it in items])
            metrics["success"] = sum(r["success"] for r in ver) / len(ver)
            metrics["graded"] = sum(r["score"] for r in ver) / len(ver)
        row[name] = metrics
        labels = [t[:40] for t in texts[:8]]
        contact_sheet(list(videos_t[:8]), out / f"sheet-{name}.png", labels=labels)
        if grid is None or name == "user":
            grid = videos_t[: ecfg.grid_videos]
    if rewrites is not None:
        row["rewrites"] = rewrites
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "grid.safetensors") as tmp:
        save_file({"videos": (grid * 255).round().to(torch.uint8).contiguous()}, str(tmp))
    handle.remove()
    return row


# ---- the report ----------------------------------------------------------------------------------------------------


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "—"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def report_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    has_caption = any("caption" in r["eval"] for r in rows)
    reward_keys = sorted(
        {k for r in rows for s in ("caption", "user") for k in r["eval"].get(s, {}) if k.startswith("reward.")}
    )
    reward_keys = [k for k in reward_keys if "/" not in k]  # named rewards, not their sub-components
    head = ["stage", "what changed"]
    sets = (["caption"] if has_caption else []) + ["user"]
    for s in sets:
        tag = "captions" if s == "caption" else "user prompts"
        if any("success" in r["eval"].get(s, {}) for r in rows):
            head += [f"success ({tag})", f"graded ({tag})"]
        head += [f"{k} ({tag})" for k in reward_keys]
        if any("guard" in r["eval"].get(s, {}) for r in rows):
            head += [f"guard ({tag})"]
    head += ["s / video", "stage time"]
    body = []
    for r in rows:
        line = [r["stage"], r["what"]]
        for s in sets:
            m = r["eval"].get(s, {})
            if any("success" in x["eval"].get(s, {}) for x in rows):
                line += [_fmt(m.get("success"), True), _fmt(m.get("graded"))]
            line += [_fmt(m.get(k)) for k in reward_keys]
            if any("guard" in x["eval"].get(s, {}) for x in rows):
                line += [_fmt(m.get("guard"))]
        secs = r["eval"].get("user", {}).get("seconds_per_video")
        line += [f"{secs:.2f}" if secs is not None else "—", f"{r['seconds']:.0f} s" if r.get("seconds") else "—"]
        body.append(line)
    return head, body


def describe(stage: str, state: dict[str, Any]) -> str:
    if stage == "base":
        return f"`{state['model']}`"
    if stage == "sft":
        return f"SFT → `{Path(state['model']).parent.name}/{Path(state['model']).name}`"
    if stage == "rl":
        return f"RL LoRA `{Path(state['lora']).name}`" if state.get("lora") else "RL (full)"
    if stage == "enhance":
        if not state.get("enhancer"):
            return "no enhancer"
        e = Path(state["enhancer"])
        return f"rewriter `{e.parent.name}/{e.name}`" if e.parent.name else f"rewriter `{e}`"
    if stage == "distill":
        meta = _distilled(state.get("model"))
        return f"DMD2 student, {meta.get('steps', '?')} steps, no CFG" if meta else "distilled student"
    if stage == "optimize":
        return ", ".join(f"{k}: {v}" for k, v in state.get("inference", {}).items()) or "no settings"
    return stage


def _distilled(model: str | None) -> dict[str, Any]:
    from vidpost.models.base import read_vidpost_config

    return read_vidpost_config(Path(model)).get("distilled", {}) if model else {}


def write_report(run_dir: Path, cfg: Any, rows: list[dict[str, Any]]) -> Path:
    from safetensors.torch import load_file

    from vidpost.evaluation.gifs import make_gif

    head, body = report_rows(rows)
    md = [f"# {cfg.name}: staged run", "", f"Held-out prompts: `{cfg.eval.prompts}` (first {cfg.eval.limit}).", ""]
    md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(line) + " |" for line in body]
    md += [
        "",
        "Captions: the canonical prompts (model quality); user prompts: what users type, rewritten by the",
        "enhancer from the enhance stage on. Rewards and the verifier judge against the caption, never the rewrite.",
    ]
    write_text(run_dir / "report.md", "\n".join(md) + "\n")

    grids = [load_file(str(run_dir / r["stage"] / "eval" / "grid.safetensors"))["videos"] for r in rows]
    k = min(g.shape[0] for g in grids)
    # one animation: prompts as rows, stages as columns
    cols = [torch.cat(list(g[:k].float() / 255), dim=2) for g in grids]  # each [3, T, k·H, W]
    t = min(c.shape[1] for c in cols)
    mosaic = torch.cat([c[:, :t] for c in cols], dim=3)
    gif = make_gif(mosaic, size=min(96 * len(rows), 1024), frames=t)
    write_bytes(run_dir / "grid.gif", gif)
    html = [
        "<!doctype html><meta charset='utf-8'><title>vidpost staged run</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:nth-child(-n+2){text-align:left}</style>",
        f"<h1>{cfg.name}: staged run</h1><p>Held-out prompts: <code>{cfg.eval.prompts}</code> "
        f"(first {cfg.eval.limit}). Run folder: <code>{run_dir}</code>.</p>",
        "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>",
    ]
    html += ["<tr>" + "".join(f"<td>{c}</td>" for c in line) + "</tr>" for line in body]
    html += ["</table>", "<h2>Videos, stages side by side</h2>"]
    html += ["<p>" + " | ".join(r["stage"] for r in rows) + " (left to right); one held-out prompt per row.</p>"]
    html += ["<img src='grid.gif' style='image-rendering:pixelated'>"]
    html += ["<h2>Per stage</h2>"]
    for r in rows:
        sheets = sorted((run_dir / r["stage"] / "eval").glob("sheet-*.png"))
        html += [f"<h3>{r['stage']}</h3>"] + [f"<img src='{p.relative_to(run_dir)}' width='720'>" for p in sheets]
    write_text(run_dir / "report.html", "\n".join(html) + "\n")
    return run_dir / "report.md"
