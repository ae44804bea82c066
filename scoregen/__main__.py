"""``python -m scoregen``: the command line (what ``torchrun -m scoregen`` starts on every rank)."""

import sys

from .cli import main

sys.exit(main())
