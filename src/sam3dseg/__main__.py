"""``python -m sam3dseg`` (and ``torchrun -m sam3dseg``) runs the command line."""

import sys

from .cli import main

sys.exit(main())
