"""``python -m mpisgd``: the command line (see :mod:`mpisgd.cli`)."""
import sys

from .cli import main

sys.exit(main())
