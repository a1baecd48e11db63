#!/usr/bin/env python
"""Generate videos from prompts: `python generate.py --prompt "a red circle moves to the right"`.

Thin entry point over `vidpost.pipelines.generate` (also available as `vidpost generate`); `--help` lists options.
Run it with the Python that has vidpost installed: `.venv/bin/python generate.py ...` (or `source .venv/bin/activate`
first), after `make demo` or `make venv` created `.venv`.
"""

import sys

try:
    from vidpost.errors import run_main
    from vidpost.pipelines.generate import main
except ModuleNotFoundError as e:  # the repo root's vidpost/ folder is found, the installed package is not
    print(
        f"error: {e.msg}: this Python ({sys.executable}) does not have vidpost installed. Run `make venv` (or "
        "`make demo`) once, then `.venv/bin/python generate.py ...` or `source .venv/bin/activate` first.",
        file=sys.stderr,
    )
    raise SystemExit(2) from None

if __name__ == "__main__":
    raise SystemExit(run_main(main))
