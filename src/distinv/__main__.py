"""``python -m distinv``: the command line (the same as the ``distinv`` command)."""

import sys

from distinv.cli import main

sys.exit(main())
