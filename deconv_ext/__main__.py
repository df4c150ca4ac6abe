"""``python -m deconv_ext``: the command line (see :mod:`deconv_ext.app.cli`)."""
import sys

from .app.cli import main

sys.exit(main())
