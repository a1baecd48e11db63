"""The exception boundary of every command: a known kind of failure is one `error: ...` line and exit 2, never a
traceback.

Known kinds: a bad input or config (`ValueError`, which every check in vidpost raises: a full disk while writing
(`vidpost.outputs.OutOfSpace`), a busy output folder, a checkpoint that does not load included), YAML that does not
parse, a weight file that is not safetensors or is truncated, a file that cannot be read or written (`OSError`: not
found, permission, no space), memory that cannot be allocated. Anything else is a bug and keeps its traceback (exit
1). `VIDPOST_TRACEBACK=1` shows the traceback of the known kinds too. Ctrl-C is exit 130 with one line.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable

BAD_INPUT = 2
"""the exit status of a known failure (`vidpost.training.runner.ExitCode.BAD_INPUT`)"""


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0].strip()


def describe(e: BaseException) -> str | None:
    """The one line for a known kind of failure, or None for an unexpected one."""
    import yaml

    if isinstance(e, ValueError):  # every input check raises it (a bad JSON file, a bad number too)
        return str(e).strip()
    if isinstance(e, yaml.YAMLError):
        return f"not valid YAML: {first_line(e)}"
    if type(e).__name__ == "SafetensorError":
        return f"a weight file does not load ({first_line(e)}): it is truncated or not a safetensors file"
    if isinstance(e, OSError):
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"no space left on the device{f' writing {e.filename}' if e.filename else ''}"
        if e.filename is not None and e.strerror:
            return f"{e.strerror}: {e.filename}"
        return first_line(e)
    if _out_of_memory(e):
        return (
            f"out of memory ({first_line(e)}); lower the batch size, the number of frames or the resolution, or use "
            "a larger device"
        )
    if type(e).__name__ == "UnpicklingError":
        return f"a file was refused: {first_line(e).split('. ')[0]} (vidpost never unpickles untrusted files)"
    return None


def _out_of_memory(e: BaseException) -> bool:
    if type(e).__name__ == "OutOfMemoryError" or isinstance(e, MemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def report(line: str) -> None:
    """Print `line` to stderr as the last line: the progress bars of the work that stopped are closed first (they
    keep their last state), so the message is on a line of its own."""
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None:
        for bar in list(getattr(tqdm.tqdm, "_instances", ())):
            bar.close()
    print(line, file=sys.stderr)


def run_main(main: Callable[..., int | None], argv: list[str] | None = None) -> int:
    """`main(argv)` behind the boundary → its exit status (argparse's exits included: a bad flag is 2, --help 0)."""
    try:
        return int(main(argv) or 0)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        report("interrupted")
        return 130
    except Exception as e:
        line = describe(e)
        if line is None or os.environ.get("VIDPOST_TRACEBACK"):
            raise
        report(f"error: {line}")
        return BAD_INPUT
