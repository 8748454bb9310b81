"""``python -m drmpy``: the command line of :mod:`drmpy.cli`."""

import sys

from .cli import main

sys.exit(main())
