"""Where the enhancer keeps things, and the persistent rewrite cache.

Everything lives under one user cache root: `$VIDPOST_CACHE` when set, else `$XDG_CACHE_HOME/vidpost`, else
`~/.cache/vidpost`. Converted enhancer models go to `<root>/enhancers/<name>/`, rewrites to
`<root>/enhance/rewrites.sqlite` (a `cache_dir` argument overrides the folder).

A cache entry is keyed by the SHA-256 of a canonical JSON of everything that decides the output: the model's
identity (see `Rewriter.model_identity`), the system prompt, the few-shot turns, the generation settings (greedy or
sampling with its temperature / top-p / seed, max_new_tokens) plus the validation limits, and the prompt. A change
to any of them is a different key, so a stale rewrite is never returned. Fallbacks are cached too (they are as
deterministic as successes). SQLite makes concurrent writers from several processes safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path


def cache_root() -> Path:
    if os.environ.get("VIDPOST_CACHE"):
        return Path(os.environ["VIDPOST_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "vidpost"


def cache_key(**parts) -> str:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class RewriteCache:
    """A key → (text, raw, fallback_reason) store in one SQLite file."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder).expanduser() if folder is not None else cache_root() / "enhance"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "rewrites.sqlite"
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS rewrites (key TEXT PRIMARY KEY, prompt TEXT, text TEXT, raw TEXT, "
                "fallback_reason TEXT, created REAL)"
            )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=30)) as db, db:  # commit on success, always close
            yield db

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        if not keys:
            return {}
        out: dict[str, dict] = {}
        with self._connect() as db:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT key, text, raw, fallback_reason FROM rewrites WHERE key IN ({marks})"
                rows = db.execute(query, chunk).fetchall()
                out |= {k: {"text": t, "raw": r, "fallback_reason": f} for k, t, r, f in rows}
        return out

    def put_many(self, rows: list[tuple[str, str, str, str, str | None]]) -> None:
        """rows: (key, prompt, text, raw, fallback_reason)."""
        now = time.time()
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO rewrites VALUES (?, ?, ?, ?, ?, ?)", [(*row, now) for row in rows])

    def __len__(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM rewrites").fetchone()[0]
