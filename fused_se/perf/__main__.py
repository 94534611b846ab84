import os
import sys

if "--traffic" in sys.argv:  # the byte counter runs the kernels in the Triton interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from .cli import main

sys.exit(main())
