"""python -m fused_se.bench: the same as fused-se-bench."""

import sys

from .cli import main

sys.exit(main())
