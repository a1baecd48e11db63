"""`python -m vidpost.shapes ...`: the Shapes-world command line (see `cli.py`)."""

import sys

from .cli import main

sys.exit(main())
