"""``python -m facekp.train`` is ``facekp-train`` (so ``torchrun -m facekp.train fit ...`` works)."""

import sys

from .cli import main

sys.exit(main())
