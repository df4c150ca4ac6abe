"""How the command line fails: one line ``deconv-ext: error: ...`` on stderr, exit 2.

Shared by every command module, so none of them imports another for its errors.
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Optional, Sequence

__all__ = ["PROG", "EXIT_OK", "EXIT_FAIL", "UsageError", "error", "require_optional",
           "CLI_EXTRA_HINT"]

PROG = "deconv-ext"
EXIT_OK, EXIT_FAIL = 0, 2

#: What to run when a command's optional packages are missing.
CLI_EXTRA_HINT = 'pip install "deconv_ext[cli]"'

# import name -> distribution name, for the packages of the ``cli`` extra
_DISTRIBUTIONS = {"PIL": "pillow", "tifffile": "tifffile", "tqdm": "tqdm",
                  "skimage": "scikit-image", "matplotlib": "matplotlib"}


class UsageError(Exception):
    """A problem with the command as a whole; reported in one line, exit 2."""


def error(message: str, write: Optional[Callable[[str], None]] = None) -> None:
    """Print one ``deconv-ext: error: ...`` line on stderr (or through ``write``)."""
    line = f"{PROG}: error: {' '.join(str(message).split())}"
    (write or (lambda s: print(s, file=sys.stderr, flush=True)))(line)


def require_optional(command: str, modules: Sequence[str]) -> None:
    """Import ``modules``; UsageError naming the missing ones and the extra if any fails.

    Parameters
    ----------
    command : str
        The subcommand that needs them (named in the message).
    modules : sequence of str
        Import names, each a key of the ``cli`` extra's packages.
    """
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(_DISTRIBUTIONS.get(name, name))
    if missing:
        raise UsageError(f"{command} needs {', '.join(missing)}, not installed: "
                         f"{CLI_EXTRA_HINT}")
