"""How the command line fails: one line ``deconv-ext: error: ...`` on stderr, exit 2.

Shared by every command module, so none of them imports another for its errors.

Stopped by a signal, a command exits ``128 + signal number`` as a shell
reports it (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP), after removing
its partial outputs: :func:`terminate_cleanly` turns SIGTERM and SIGHUP into a
:class:`Terminated` exception, which unwinds through every ``finally`` and
the atomic writers' clean-up just as Ctrl-C's ``KeyboardInterrupt`` does.
"""
from __future__ import annotations

import contextlib
import importlib
import signal
import sys
import threading
from typing import Callable, Iterator, Optional, Sequence

__all__ = ["PROG", "EXIT_OK", "EXIT_FAIL", "UsageError", "error", "require_optional",
           "CLI_EXTRA_HINT", "DASK_EXTRA_HINT", "Terminated", "terminate_cleanly"]

PROG = "deconv-ext"
EXIT_OK, EXIT_FAIL = 0, 2

#: What to run when a command's optional packages are missing.
CLI_EXTRA_HINT = 'pip install "deconv_ext[cli]"'
#: ... and when Zarr input or output needs Dask and Zarr.
DASK_EXTRA_HINT = 'pip install "deconv_ext[dask]"'

#: The signals after which a command cleans up and exits 128 + the signal's number.
TERMINATING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP")
                            if hasattr(signal, name))

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


class Terminated(BaseException):
    """A termination signal arrived; raised in the main thread by :func:`terminate_cleanly`.

    A ``BaseException`` like ``KeyboardInterrupt``: no ``except Exception``
    swallows it, every clean-up runs.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def terminate_cleanly() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` (main thread only).

    Once one has arrived, later ones are ignored until the block exits, so
    that the clean-up the first one started is not cut short. The previous
    handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        for s in TERMINATING_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise Terminated(signum)

    previous = {s: signal.signal(s, handler) for s in TERMINATING_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
