"""``python -m mpisgd``: the command line (see :mod:`mpisgd.app.cli`)."""
import sys

from .app.cli import main

sys.exit(main())
