"""``deblur`` of images larger than memory: files tile by tile through memory maps, Zarr via Dask.

Files (``--tile TH[,TW]``)
    The input is mapped, not read, where the file allows it (uncompressed
    TIFF, ``.npy``: :func:`~deconv_ext.app.image_io.open_image`); other files
    are decoded within ``--max-pixels``. The colour planes are solved by
    :func:`deconv_ext.tiling.deconvolve_tiled` straight from the map and
    written tile by tile into a memory-mapped output (TIFF or ``.npy``: a
    hidden ``.part`` file, renamed once complete); other output formats are
    assembled in memory and written by ``write_image``. Integer outputs are
    solved into a float32 scratch map beside the output, converted band by
    band and the scratch removed, so memory stays that of a tile and a band.

Zarr (a ``.zarr`` input, written as ``.zarr``)
    ``dask.array.from_zarr`` -> :func:`deconv_ext.dask.deconvolve` (chunks of
    ``--tile`` if given, else the array's own) -> a new Zarr array, computed
    one chunk at a time by Dask's synchronous scheduler (each chunk's FFTs use
    every core through torch). Needs the ``dask`` extra.

Both compute the same border-correct result (the image extended by the
boundary rule by the inverse filter's reach, solved and cropped: see
:mod:`deconv_ext.tiling`); near the image's edges it differs from the untiled
``deconvolve(..., boundary=b)``, which pads by the PSF's half size only.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from typing import Iterator, Optional, Tuple, Union

import numpy as np
import torch

from ..tiling import deconvolve_tiled
from .errors import DASK_EXTRA_HINT, UsageError
from .image_io import (DTYPES, MEMMAP_EXTENSIONS, ImageError, atomic_output, channel_views,
                       check_encodable, check_free_space, convert_alpha, count_nonfinite,
                       memmap_output, open_image, unit_to_dtype, write_image)

__all__ = ["parse_tile", "parse_overlap", "tiled_problem", "tiled_solve", "check_psf_fits",
           "check_finite_input", "nonfinite_result", "deblur_tiled", "zarr_problem", "deblur_zarr"]

#: The keyword arguments of ``deconvolve`` that the tiled solve takes too.
TILED_KEYS = ("eps", "method", "reg", "boundary", "rcond")
# Values converted per band when an output is converted from the solve's float32.
_BAND_VALUES = 1 << 22

Overlap = Union[str, int, Tuple[int, int]]


# --------------------------------------------------------------------------
# options

def _ints(text: str, option: str, what: str) -> Tuple[int, ...]:
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected {what}") from None
    if not 1 <= len(values) <= 2:
        raise UsageError(f"{option} {text!r}: expected {what}")
    return values


def parse_tile(text: str) -> Tuple[int, int]:
    """``--tile TH[,TW]`` -> (TH, TW); one number is a square tile."""
    values = _ints(text, "--tile", "TH or TH,TW, whole numbers of pixels >= 1")
    if min(values) < 1:
        raise UsageError(f"--tile {text!r}: expected TH or TH,TW, whole numbers of pixels >= 1")
    return (values[0], values[-1])


def parse_overlap(text: Optional[str]) -> Overlap:
    """``--overlap auto|N|NH,NW`` -> "auto", N or (NH, NW) (checked by the tiled solve)."""
    if text is None or str(text).strip().lower() == "auto":
        return "auto"
    values = _ints(text, "--overlap", "auto, N or NH,NW (pixels per side)")
    return values[0] if len(values) == 1 else (values[0], values[1])


def tiled_solve(solve: dict, boundary: str) -> dict:
    """The ``deconvolve`` keyword arguments of the untiled solve, as the tiled solve takes them."""
    kwargs = {k: solve[k] for k in TILED_KEYS if k in solve}
    kwargs["boundary"] = boundary
    return kwargs


def tiled_problem(psf: torch.Tensor, solve: dict, tile: Optional[Tuple[int, int]],
                  overlap: Overlap) -> Optional[str]:
    """None if the tiled solve accepts these settings, else its reason (one line).

    One tiled solve of a small probe image checks every setting with the
    library's own validation (boundary, tile against the PSF, overlap, the
    filter's reach) before any file is touched; the reach it computes is
    kept by the library for the real images.
    """
    kh, kw = psf.shape[-2:]
    probe = torch.linspace(0.1, 1.0, (2 * kh + 2) * (2 * kw + 3),
                           dtype=torch.float32).reshape(2 * kh + 2, 2 * kw + 3)
    extra = {} if tile is None else {"tile": tile}
    try:
        deconvolve_tiled(probe, psf.cpu(), overlap=overlap, **solve, **extra)
    except (NotImplementedError, ValueError, TypeError) as exc:
        return " ".join(str(exc).split())
    return None


# --------------------------------------------------------------------------
# checks shared with the in-memory deblur

def check_psf_fits(src: str, psf: torch.Tensor, size: Tuple[int, int]) -> None:
    """ValueError naming both sizes if the PSF is larger than the image."""
    kh, kw = psf.shape[-2:]
    H, W = size
    if kh > H or kw > W:
        raise ValueError(f"{src}: the PSF ({kh}x{kw}) is larger than the image ({H}x{W})")


def check_finite_input(src: str, arr: np.ndarray) -> None:
    """ImageError if the image holds NaN or infinite values (counted, never solved).

    One such pixel spreads over the whole restored image (every output pixel
    depends on every input pixel), so the result would be all NaN.
    """
    n = count_nonfinite(arr)
    if n:
        raise _nonfinite_input(src, n, arr.size)


def _nonfinite_input(src: str, n: int, total: int) -> ImageError:
    return ImageError(f"{src}: {n:,} of {total:,} pixel values are NaN or infinite; a "
                      f"deconvolution spreads each of them over the whole image, so the image "
                      f"is refused (replace them first, e.g. with numpy.nan_to_num)")


def nonfinite_result(src: str, n: int, total: int) -> ImageError:
    return ImageError(f"{src}: the restored image has {n:,} of {total:,} values NaN or infinite "
                      f"(the solve lost precision: try a larger --eps or a float64 input); "
                      f"nothing written")


# --------------------------------------------------------------------------
# files

@contextlib.contextmanager
def _scratch(folder: str, shape: Tuple[int, ...], on_disk: bool) -> Iterator[np.ndarray]:
    """A float32 array of ``shape``: a hidden memory-mapped file in ``folder``, or in memory.

    The file is removed when the block ends, however it ends.
    """
    if not on_disk:
        yield np.empty(shape, np.float32)
        return
    path = None
    try:
        fd, path = tempfile.mkstemp(dir=folder, prefix=".deconv-ext-scratch.", suffix=".npy")
        os.close(fd)
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        yield arr
        del arr
    finally:
        if path is not None:
            os.unlink(path)


def _needs_scratch(in_dtype: np.dtype, out_dtype: np.dtype) -> bool:
    """Whether the solve's floats must go through a float32 scratch array before ``out``.

    The tiled solve writes floats only, on the input's raw scale: integer
    outputs need converting, and so do integer inputs into float16 (65535
    overflows it before the scaling to [0, 1]).
    """
    return out_dtype.kind == "u" or (in_dtype.kind == "u" and out_dtype.itemsize < 4)


def _bands(n_rows: int, row_values: int):
    step = max(1, _BAND_VALUES // max(1, row_values))
    return [(r, min(r + step, n_rows)) for r in range(0, n_rows, step)]


def _fill(out: np.ndarray, planes: np.ndarray, alpha: Optional[np.ndarray], src: str,
          psf: torch.Tensor, solve: dict, tile, overlap: Overlap, progress: bool,
          scratch_folder: Optional[str]) -> None:
    """Solve ``planes`` (C, H, W) tile by tile into the image ``out`` (H, W[, C])."""
    out_planes, out_alpha = channel_views(out)
    dtype = out.dtype
    C, H, W = planes.shape
    top = np.iinfo(planes.dtype).max if planes.dtype.kind == "u" else None
    bands = _bands(H, C * W)
    extra = {} if tile is None else {"tile": tile}
    if _needs_scratch(planes.dtype, dtype):
        with _scratch(scratch_folder or ".", (C, H, W), scratch_folder is not None) as raw:
            deconvolve_tiled(planes, psf, out=raw, overlap=overlap, progress=progress,
                             **solve, **extra)
            bad = 0
            for r0, r1 in bands:
                unit = raw[:, r0:r1].astype(np.float64) / (top or 1)
                bad += count_nonfinite(unit)
                out_planes[:, r0:r1] = unit_to_dtype(unit, dtype)
            if bad:
                raise nonfinite_result(src, bad, raw.size)
    else:
        # An integer input is solved on its raw values: the solve is linear, so
        # scaling the result by 1/max afterwards equals scaling the input first.
        deconvolve_tiled(planes, psf, out=out_planes, overlap=overlap, progress=progress,
                         **solve, **extra)
        bad = 0
        for r0, r1 in bands:
            if top is not None:
                out_planes[:, r0:r1] /= top
            bad += count_nonfinite(out_planes[:, r0:r1])
        if bad:
            raise nonfinite_result(src, bad, out_planes.size)
    if alpha is not None:
        for r0, r1 in _bands(H, W):
            out_alpha[r0:r1] = convert_alpha(np.asarray(alpha[r0:r1]), dtype)


def deblur_tiled(src: str, dst: str, psf: torch.Tensor, out_dtype: str, solve: dict,
                 tile: Optional[Tuple[int, int]], overlap: Overlap = "auto",
                 max_pixels: Optional[int] = None, progress: bool = False) -> None:
    """Restore one image file tile by tile; the output is written atomically.

    Parameters
    ----------
    src, dst : str
        Image files; a TIFF or ``.npy`` ``dst`` is written through a memory map.
    psf : Tensor (kh, kw), on the device to compute on
    out_dtype : "keep" or a pixel type name
    solve : dict
        Keyword arguments of :func:`deconv_ext.tiling.deconvolve_tiled`
        (:func:`tiled_solve`).
    tile : (th, tw) or None (the library's default)
    overlap : "auto", int or (int, int)
    max_pixels : int or None
        Limit for inputs that must be decoded into memory (not for mapped ones).
    progress : bool
        A progress bar over the tiles.

    Raises
    ------
    ImageError, ValueError, TypeError
        With a one-line message naming the file.
    """
    arr, _ = open_image(src, max_pixels)
    check_psf_fits(src, psf, arr.shape[:2])
    check_finite_input(src, arr)
    planes, alpha = channel_views(arr)
    dtype = arr.dtype if out_dtype == "keep" else np.dtype(out_dtype)
    ext = os.path.splitext(dst)[1].lower()
    check_encodable(dtype, 1 if arr.ndim == 2 else arr.shape[-1], ext, dst)
    if ext not in MEMMAP_EXTENSIONS:
        out = np.empty(arr.shape, dtype)
        _fill(out, planes, alpha, src, psf, solve, tile, overlap, progress, None)
        write_image(dst, out)
        return
    folder = os.path.dirname(os.path.abspath(dst))
    need = arr.size * dtype.itemsize + (planes.size * 4 if _needs_scratch(arr.dtype, dtype) else 0)
    check_free_space(folder, need + (1 << 20), dst)
    with atomic_output(dst) as tmp:
        out = memmap_output(tmp, arr.shape, dtype)
        try:
            _fill(out, planes, alpha, src, psf, solve, tile, overlap, progress, folder)
            out.flush()
        finally:
            del out


# --------------------------------------------------------------------------
# Zarr

def zarr_problem() -> Optional[str]:
    """None if Zarr can be read and written here, else what to install."""
    missing = []
    for module, dist in (("dask.array", "dask"), ("zarr", "zarr")):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(dist)
    if missing:
        return (f"Zarr input and output need {' and '.join(missing)}, not installed: "
                f"{DASK_EXTRA_HINT}")
    return None


def _open_zarr(src: str):
    import zarr

    try:
        return zarr.open_array(src, mode="r")
    except (ValueError, OSError, KeyError, TypeError) as exc:
        try:
            group = zarr.open_group(src, mode="r")
            names = sorted(group.array_keys())
        except (ValueError, OSError, KeyError, TypeError):
            names = None
        if names is not None:
            hint = (f"; give one of its arrays, e.g. {os.path.join(src, names[0])}" if names
                    else " without arrays")
            raise ImageError(f"{src}: a Zarr group, not an array{hint}") from None
        raise ImageError(f"{src}: cannot open as a Zarr array ({' '.join(str(exc).split())})"
                         ) from None


def _to_pixels(block: np.ndarray, top: Optional[int], dtype: np.dtype, src: str) -> np.ndarray:
    """One solved chunk (raw scale) as output pixels; refuses non-finite values."""
    unit = block.astype(np.float64) / top if top else block
    n = count_nonfinite(unit)
    if n:
        raise nonfinite_result(src, n, block.size)
    return unit_to_dtype(unit, dtype)


def deblur_zarr(src: str, dst: str, psf: torch.Tensor, out_dtype: str, solve: dict,
                tile: Optional[Tuple[int, int]], overlap: Overlap = "auto",
                progress: bool = False) -> None:
    """Restore a Zarr array (..., H, W) into a new Zarr array, chunk by chunk, via Dask.

    Parameters as in :func:`deblur_tiled`; ``tile`` rechunks the image axes
    (the output's chunks too), else the input's chunks are used. The last two
    axes are the image's; leading axes (channels, planes, time) are solved
    one plane at a time.
    """
    import dask
    import dask.array as da
    import zarr

    from .. import dask as dask_solve

    z = _open_zarr(src)
    dt = np.dtype(z.dtype)
    if dt not in DTYPES:
        raise ImageError(f"{src}: pixel type {dt} is not supported; expected uint8, uint16, "
                         f"float16, float32 or float64")
    if z.ndim < 2 or min(z.shape) < 1:
        raise ImageError(f"{src}: Zarr array of shape {tuple(z.shape)} is not an image; expected "
                         f"(..., H, W)")
    check_psf_fits(src, psf, tuple(z.shape[-2:]))
    x = da.from_zarr(z)
    if tile is not None:
        x = x.rechunk({x.ndim - 2: tile[0], x.ndim - 1: tile[1]})
    dtype = dt if out_dtype == "keep" else np.dtype(out_dtype)
    sync = dask.config.set(scheduler="synchronous")
    with sync:
        if dt.kind == "f":
            n = int((~da.isfinite(x)).sum().compute())
            if n:
                raise _nonfinite_input(src, n, x.size)
        try:
            y = dask_solve.deconvolve(x, psf.cpu(), overlap=overlap, **solve)
        except ValueError as exc:
            msg = " ".join(str(exc).split())
            if "chunks" in msg:
                msg += "; or pass --tile TH,TW (the chunks to compute on, each >= the depth)"
            raise ValueError(f"{src}: {msg}") from None
        top = np.iinfo(dt).max if dt.kind == "u" else None
        y = y.map_blocks(_to_pixels, top, dtype, src, dtype=dtype)
        with atomic_output(dst, folder=True) as tmp:
            out = zarr.open_array(tmp, mode="w", shape=y.shape, chunks=y.chunksize, dtype=dtype)
            out.attrs.update(dict(z.attrs))
            bar = contextlib.nullcontext()
            if progress:
                from dask.diagnostics import ProgressBar

                bar = ProgressBar(out=sys.stderr)
            with bar:
                da.store(y, out, lock=False)
