"""``python -m deconv_ext``: the command line (see :mod:`deconv_ext.cli`)."""
import sys

from .cli import main

sys.exit(main())
