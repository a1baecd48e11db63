"""Prompt items for an evaluation (`{id, prompt, seed}` from a file or the Shapes held-out split) and one
record per video to generate or score."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from vidpost.seeding import prompt_seed, video_seed

SHAPES_HELDOUT = "shapes-heldout"
VIDEO_EXTENSIONS = (".mp4", ".gif", ".webm", ".mkv", ".mov")

_ID_OK = re.compile(r"^[^/\\\x00]+$")


def _read_items(path: Path) -> list[Any]:
    suffix = path.suffix.lower()
    text = path.read_text()
    if suffix == ".jsonl":
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from e
        return items
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg})") from e
        if isinstance(data, dict) and isinstance(data.get("prompts"), list):
            data = data["prompts"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of prompts (or {{'prompts': [...]}})")
        return data
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def load_prompts(source: str | os.PathLike, limit: int | None = None) -> list[dict[str, Any]]:
    """Prompt items `{id, prompt, seed}` (seed None when not given) from a file or `shapes-heldout`, in order.

    Raises ValueError for a missing/empty file, an item without a prompt, or an id that is duplicated or cannot
    name a file."""
    if str(source) == SHAPES_HELDOUT:
        from vidpost.shapes.splits import heldout_prompts

        raw: list[Any] = [{"id": it["id"], "prompt": it["caption"], "seed": it["seed"]} for it in heldout_prompts()]
        where = SHAPES_HELDOUT
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"prompts file {path} does not exist (or pass '{SHAPES_HELDOUT}')")
        raw, where = _read_items(path), str(path)
    if limit is not None:
        raw = raw[: max(0, limit)]
    if not raw:
        raise ValueError(f"no prompts in {where}")
    width = max(3, len(str(len(raw) - 1)))
    items, seen = [], set()
    for i, it in enumerate(raw):
        if isinstance(it, str):
            it = {"prompt": it}
        if not isinstance(it, dict):
            raise ValueError(f"{where}: item {i} is neither a string nor an object: {it!r}")
        prompt = it.get("prompt", it.get("caption"))
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: item {i} has no 'prompt' (or 'caption') text")
        pid = str(it["id"]) if it.get("id") is not None else f"{i:0{width}d}"
        if not _ID_OK.match(pid) or pid.startswith(".") or pid != pid.strip():
            raise ValueError(f"{where}: item {i}: id {pid!r} cannot name a file (no slashes, no leading dot)")
        if pid in seen:
            raise ValueError(f"{where}: duplicate id {pid!r}")
        seen.add(pid)
        seed = it.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"{where}: item {i}: seed must be an integer, got {seed!r}")
        items.append({"id": pid, "prompt": prompt.strip(), "seed": seed})
    return items


def discover_videos(videos_dir: Path) -> list[dict[str, Any]]:
    """Prompt-less items, one per video file in `videos_dir` (for rewards that ignore the prompt)."""
    files = sorted(p for p in videos_dir.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) in {videos_dir}")
    return [{"id": p.stem, "prompt": "", "seed": None} for p in files]


def _find_video(videos_dir: Path, vid: str) -> Path | None:
    for ext in VIDEO_EXTENSIONS:
        if (p := videos_dir / f"{vid}{ext}").exists():
            return p
    return None


def make_records(
    items: list[dict[str, Any]],
    *,
    seeds: int | None = 1,
    base_seed: int | None = 0,
    videos_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """One record per video: `{id, prompt_id, prompt, seed, video}`. With `videos_dir`, `video` is the matched
    file or None (missing); `seeds=None` then finds `<id>.<ext>` or else every `<id>_s<k>.<ext>`. Seeds: by
    `vidpost.seeding` (the item's seed or `base_seed` + index, plus k·SEED_STRIDE for video k)."""
    records = []
    for i, it in enumerate(items):
        base = prompt_seed(it.get("seed"), base_seed, i)
        n = seeds
        if n is None:  # auto: one plain file, else the numbered ones
            if videos_dir is None or _find_video(videos_dir, it["id"]) is not None:
                n = 1
            else:
                pat = re.compile(rf"^{re.escape(it['id'])}_s(\d+)$")
                ks = sorted(
                    int(m.group(1))
                    for p in videos_dir.glob(f"{_glob_escape(it['id'])}_s*")
                    if p.suffix.lower() in VIDEO_EXTENSIONS and (m := pat.match(p.stem))
                )
                n = max(ks) + 1 if ks else 1
        for k in range(n):
            vid = it["id"] if n == 1 else f"{it['id']}_s{k}"
            rec = {
                "id": vid,
                "prompt_id": it["id"],
                "prompt": it["prompt"],
                "seed": video_seed(base, k),
                "video": None,
            }
            if videos_dir is not None:
                found = _find_video(videos_dir, vid)
                rec["video"] = str(found) if found else str(videos_dir / f"{vid}.mp4")
            records.append(rec)
    return records


def slug(text: str, n: int = 40) -> str:
    """A file-name-safe form of a prompt (lower case, dashes), at most `n` characters."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:n].rstrip("-") or "video"


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def load_prompt_pool(spec: list[str] | str, pool_size: int) -> list[str]:
    """The prompts of `spec`: the list itself; "shapes-train" (canonical captions of the first `pool_size` Shapes
    train specs) or "shapes-heldout" (the held-out prompts); or the lines of a .txt file / the `prompt` (else
    `caption`) of each row of a .jsonl file, the first `pool_size` of them."""
    if isinstance(spec, list):
        if not spec:
            raise ValueError("rollout.prompts is empty")
        return list(spec)
    if spec == "shapes-train":
        from vidpost.shapes.splits import train_specs

        return [it["caption"] for it in train_specs(pool_size)]
    if spec == "shapes-heldout":
        from vidpost.shapes.splits import heldout_prompts

        return [it["caption"] for it in heldout_prompts()][:pool_size]
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"rollout.prompts: {spec!r} is neither a known set nor an existing file")
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r.get("prompt") or r["caption"] for r in rows][:pool_size]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()][:pool_size]
