"""`python -m vidpost.shapes ...`: the Shapes-world command line (see `cli.py`)."""

import sys

from vidpost.errors import run_main

from .cli import main

sys.exit(run_main(main))
