#!/usr/bin/env python
"""Generate videos from prompts: `python generate.py --prompt "a red circle moves to the right"`.

Thin entry point over `vidpost.pipelines.generate` (also available as `vidpost generate`); `--help` lists options.
"""

from vidpost.pipelines.generate import main

if __name__ == "__main__":
    raise SystemExit(main())
