"""A vidpost command run with one fault armed: the process kills itself (SIGKILL: no clean-up code runs) at a chosen
moment of writing the output at PATH. `tests/test_faults.py` runs it in a subprocess.

    python tests/fault_child.py POINT PATH [K] -- <vidpost command and its arguments>

POINT
  files          once the output's temporary folder (`PATH.tmp`) holds at least K files (a thread watches it)
  before_rename  every file of the output written and synced, just before the rename that publishes it
  mid_rename     the previous output moved aside (`PATH.old`), the new one not yet in its place
  file           a single-file output (`outputs.atomic_file`) written and synced, before its rename
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str, path: Path, k: int) -> None:
    from vidpost import outputs

    tmp = path.with_name(path.name + outputs.TMP_SUFFIX)
    if point == "files":

        def watch() -> None:
            while True:
                if tmp.is_dir() and sum(1 for f in tmp.rglob("*") if f.is_file()) >= k:
                    die()
                time.sleep(0.0005)

        threading.Thread(target=watch, daemon=True).start()
    elif point == "before_rename":
        real_sync = outputs.fsync_tree

        def sync(p: Path) -> None:
            real_sync(p)
            if Path(p) == tmp:
                die()

        outputs.fsync_tree = sync
    elif point == "mid_rename":
        real_replace = os.replace

        def replace(src, dst) -> None:
            real_replace(src, dst)
            if Path(src) == path and Path(dst) == path.with_name(path.name + outputs.OLD_SUFFIX):
                die()

        outputs.os = type(sys)("os_with_a_fault")
        outputs.os.__dict__.update(os.__dict__)
        outputs.os.replace = replace
    elif point == "file":
        real_sync_file = outputs.fsync
        name = f".{path.stem}.{os.getpid()}{outputs.TMP_SUFFIX}{path.suffix}"

        def sync_file(p: Path) -> None:
            real_sync_file(p)
            if Path(p).parent == path.parent and Path(p).name == name:
                die()

        outputs.fsync = sync_file
    else:
        raise SystemExit(f"unknown fault point {point!r}")


if __name__ == "__main__":
    split = sys.argv.index("--")
    point, path, *rest = sys.argv[1:split]
    arm(point, Path(path).absolute(), int(rest[0]) if rest else 1)
    from vidpost.cli import main

    sys.exit(main(sys.argv[split + 1 :]))
