"""The library's configuration: every environment variable, read once, in one object.

Three switches, each with a name that says what it selects:

=================================  ===========  ==========================================
variable                           default      values
=================================  ===========  ==========================================
``DECONV_EXT_KERNELS``             ``auto``     ``auto``: C++ kernels for CPU tensors, Triton
                                                for CUDA tensors; ``triton``: the Triton
                                                kernels, run by the Triton interpreter on CPU
                                                tensors where no CUDA device exists (a test
                                                path, very slow)
``DECONV_EXT_CPU_FFT``             ``pipeline`` the FFT library of eager CPU calls without
                                                autograd: ``pipeline`` (the C++ pipeline: MKL's
                                                DFTI called directly, else ``torch.fft``),
                                                ``scipy`` (``scipy.fft``), ``pyfftw`` (FFTW;
                                                GPL, only if installed), ``auto`` (opt-in, as
                                                ``torch.backends.cudnn.benchmark``: the faster
                                                of ``pipeline`` and ``scipy``, measured on the
                                                first call of each shape and cached)
``DECONV_EXT_MKL``                 ``1``        ``0``: the C++ pipeline calls ``torch.fft``
                                                instead of MKL's DFTI (to compare the two)
``DECONV_EXT_MAX_FILTER_BYTES``    1 GiB        largest stored per-frequency filter of a
                                                multi-channel layer plan before it goes
                                                matrix-free (bytes)
``XDG_CACHE_HOME``                 ``~/.cache`` where the measured FFT choices are kept
                                                (``deconv_ext/fft_choice.json`` below it);
                                                a relative path is ignored, as the XDG
                                                spec says
=================================  ===========  ==========================================

Earlier names are still read: ``DECONV_EXT_BACKEND`` (``cpp`` = ``auto``,
``triton``) for the kernels and ``DECONV_EXT_FFT`` (``torch`` = ``pipeline``)
for the CPU FFT. The pure-torch reference is not a switch: it is
:mod:`deconv_ext.reference`, called directly.

The environment is read when the package is imported (and by :func:`reload`);
:func:`override` changes settings for a block of code (tests, benchmarks).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Iterator, Mapping, Optional

__all__ = ["Config", "get", "reload", "override", "KERNELS", "CPU_FFTS"]

KERNELS = ("auto", "triton")
CPU_FFTS = ("auto", "pipeline", "scipy", "pyfftw")
DEFAULT_MAX_FILTER_BYTES = 1 << 30

# Earlier spellings, accepted so existing scripts keep working.
_LEGACY_KERNELS = {"cpp": "auto"}
_LEGACY_CPU_FFT = {"torch": "pipeline"}


@dataclasses.dataclass(frozen=True)
class Config:
    """One snapshot of the settings (see the module docstring for each one).

    Attributes
    ----------
    kernels : {"auto", "triton"}
    cpu_fft : {"pipeline", "scipy", "pyfftw", "auto"}
    mkl_dfti : bool
    max_filter_bytes : int >= 0
    cache_dir : str
        Absolute folder of the FFT-choice cache; ``""`` when there is none
        (no absolute ``XDG_CACHE_HOME`` and no home folder): the choices are
        then kept in memory only.
    """

    kernels: str = "auto"
    cpu_fft: str = "pipeline"
    mkl_dfti: bool = True
    max_filter_bytes: int = DEFAULT_MAX_FILTER_BYTES
    cache_dir: str = ""

    def __post_init__(self):
        _check_choice("kernels", self.kernels, KERNELS)
        _check_choice("cpu_fft", self.cpu_fft, CPU_FFTS)
        if (isinstance(self.max_filter_bytes, bool) or not isinstance(self.max_filter_bytes, int)
                or self.max_filter_bytes < 0):
            raise ValueError(f"max_filter_bytes={self.max_filter_bytes!r} is not valid; expected "
                             f"an int >= 0 (bytes)")


def _check_choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; expected one of "
                         f"{', '.join(map(repr, valid))}")


def _read(env: Mapping[str, str], names, legacy: dict, valid, default: str) -> str:
    for var in names:
        raw = env.get(var, "").strip().lower()
        if raw:
            value = legacy.get(raw, raw)
            if value == "torch" and var == "DECONV_EXT_BACKEND":
                raise ValueError("DECONV_EXT_BACKEND=torch no longer routes calls to the pure-torch "
                                 "reference; call deconv_ext.reference directly, or unset it")
            if value not in valid:
                raise ValueError(f"{var}={raw!r} is not valid; expected one of "
                                 f"{', '.join(map(repr, valid))} (or unset)")
            return value
    return default


def from_environment(env: Optional[Mapping[str, str]] = None) -> Config:
    """The configuration that ``env`` (default ``os.environ``) describes."""
    env = os.environ if env is None else env
    raw_bytes = env.get("DECONV_EXT_MAX_FILTER_BYTES", "").strip()
    try:
        max_bytes = int(raw_bytes) if raw_bytes else DEFAULT_MAX_FILTER_BYTES
    except ValueError:
        max_bytes = -1
    if max_bytes < 0:
        raise ValueError(f"DECONV_EXT_MAX_FILTER_BYTES={raw_bytes!r} is not valid; expected an "
                         f"int >= 0 (bytes)")
    return Config(
        kernels=_read(env, ("DECONV_EXT_KERNELS", "DECONV_EXT_BACKEND"), _LEGACY_KERNELS, KERNELS,
                      "auto"),
        # A fixed default: results never depend on a timing made under load.
        cpu_fft=_read(env, ("DECONV_EXT_CPU_FFT", "DECONV_EXT_FFT"), _LEGACY_CPU_FFT, CPU_FFTS,
                      "pipeline"),
        mkl_dfti=env.get("DECONV_EXT_MKL", "").strip() != "0",
        max_filter_bytes=max_bytes,
        cache_dir=_cache_dir(env),
    )


def _cache_dir(env: Mapping[str, str]) -> str:
    """``$XDG_CACHE_HOME/deconv_ext``, else ``~/.cache/deconv_ext``; ``""`` if neither is absolute.

    The XDG Base Directory spec: "If an implementation encounters a relative
    path in any of these variables it should consider the path invalid and
    ignore it" -- a relative one would write into the working directory. A
    home folder that cannot be found leaves ``expanduser("~")`` relative too.
    """
    root = env.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(root):
        home = env.get("HOME", "")
        if not os.path.isabs(home):
            home = os.path.expanduser("~")  # HOME unset: the password database's entry
        root = os.path.join(home, ".cache")
    return os.path.join(root, "deconv_ext") if os.path.isabs(root) else ""


_current: Optional[Config] = None


def get() -> Config:
    """The settings in force (read from the environment on first use)."""
    global _current
    if _current is None:
        _current = from_environment()
    return _current


def reload() -> Config:
    """Read the environment again (after changing ``os.environ``) and return the new settings."""
    global _current
    _current = from_environment()
    return _current


@contextlib.contextmanager
def override(**changes) -> Iterator[Config]:
    """Change settings for the body of a ``with`` block, e.g. ``override(cpu_fft="scipy")``.

    Not thread-local: meant for tests, benchmarks and scripts.
    """
    global _current
    before = get()
    _current = dataclasses.replace(before, **changes)
    try:
        yield _current
    finally:
        _current = before
