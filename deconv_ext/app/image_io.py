"""Reading and writing image files for the command line.

Formats are chosen by file extension: PNG, JPEG and BMP through Pillow, TIFF
through tifffile, ``.npy`` through NumPy. Arrays are ``(H, W)`` (grayscale) or
``(H, W, C)`` with ``C`` in 1..4 (gray + alpha, RGB, RGBA), of dtype uint8,
uint16, float32 or float64.

Writes are atomic: the image goes to a temporary file in the destination
folder, which then replaces the destination in one ``os.replace``; a failed
write leaves no file behind and never a half-written one.

The module is named ``image_io`` so that it never shadows the ``imageio``
package or the standard library's ``io``.
"""
from __future__ import annotations

import os
import tempfile
from typing import Optional, Tuple

import numpy as np

__all__ = ["ImageError", "EXTENSIONS", "read_image", "write_image", "is_image_path",
           "to_unit_float", "from_unit_float"]

PIL_EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}
TIFF_EXTENSIONS = (".tif", ".tiff")
EXTENSIONS = tuple(PIL_EXTENSIONS) + TIFF_EXTENSIONS + (".npy",)
DTYPES = (np.uint8, np.uint16, np.float32, np.float64)


class ImageError(Exception):
    """An image that cannot be read or written; the message is one line."""


def is_image_path(path: str) -> bool:
    """Whether ``path`` has one of the supported extensions (case-insensitive)."""
    return os.path.splitext(path)[1].lower() in EXTENSIONS


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _check_array(arr: np.ndarray, path: str) -> np.ndarray:
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if arr.dtype not in DTYPES:
        raise ImageError(f"{path}: pixel type {arr.dtype} is not supported; expected uint8, "
                         f"uint16, float32 or float64")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and 2 <= arr.shape[-1] <= 4)):
        raise ImageError(f"{path}: array of shape {arr.shape} is not an image; expected (H, W) or "
                         f"(H, W, C) with C in 1..4")
    if min(arr.shape[:2]) < 1:
        raise ImageError(f"{path}: empty image of shape {arr.shape}")
    return arr


def _png_is_16bit_colour(path: str) -> bool:
    # Pillow silently reduces 16-bit colour PNGs to 8 bits; the PNG header
    # (IHDR: bit depth at byte 24, colour type at byte 25) tells us first.
    with open(path, "rb") as f:
        head = f.read(26)
    return (len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16
            and head[25] in (2, 6))


def _read_pil(path: str) -> np.ndarray:
    from PIL import Image

    if path.lower().endswith(".png") and _png_is_16bit_colour(path):
        raise ImageError(f"{path}: 16-bit colour PNG is not supported (Pillow reads it as 8-bit); "
                         f"convert it to TIFF")
    with Image.open(path) as im:
        im.load()  # decode now: truncated files fail here, not later
        mode = im.mode
        if mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV", "PA", "La", "RGBa", "RGBX"):
            im = im.convert("RGBA" if "A" in mode or "a" in mode else
                            ("L" if mode == "1" else "RGB"))
        arr = np.array(im)
    if arr.dtype == np.int32:
        # Mode "I": a 16-bit grayscale decoded into 32-bit integers.
        if arr.min() < 0 or arr.max() > 65535:
            raise ImageError(f"{path}: 32-bit integer pixels are not supported")
        arr = arr.astype(np.uint16)
    return arr


def read_image(path: str) -> np.ndarray:
    """Read an image file into an array.

    Parameters
    ----------
    path : str
        A ``.png``, ``.jpg``/``.jpeg``, ``.bmp``, ``.tif``/``.tiff`` or ``.npy`` file.

    Returns
    -------
    ndarray (H, W) or (H, W, C), dtype uint8, uint16, float32 or float64
        (palette and 1-bit images are expanded to RGB(A) / 8-bit gray).

    Raises
    ------
    ImageError
        Missing, unreadable, truncated or unsupported file (one-line message).
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        raise ImageError(f"{path}: unsupported file type {ext or '(no extension)'!r}; expected "
                         f"one of {', '.join(EXTENSIONS)}")
    if not os.path.isfile(path):
        raise ImageError(f"{path}: no such file")
    try:
        if ext == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif ext in TIFF_EXTENSIONS:
            import tifffile

            arr = tifffile.imread(path)
        else:
            arr = _read_pil(path)
    except ImageError:
        raise
    except (OSError, ValueError, EOFError, SyntaxError, IndexError, KeyError, TypeError) as exc:
        # Every decoder reports corrupt input with one of these; the file name
        # and the decoder's own words are what the user needs.
        raise ImageError(f"{path}: cannot read image ({_one_line(exc)})") from None
    return _check_array(np.asarray(arr), path)


def _encode_check(arr: np.ndarray, ext: str, path: str) -> None:
    """Refuse, before anything is written, arrays the format cannot hold."""
    channels = 1 if arr.ndim == 2 else arr.shape[-1]
    if ext in PIL_EXTENSIONS:
        fmt = PIL_EXTENSIONS[ext]
        if arr.dtype.kind == "f":
            raise ImageError(f"{path}: {fmt} cannot store {arr.dtype} pixels; write .tif or .npy, "
                             f"or choose --out-dtype uint8/uint16")
        if arr.dtype == np.uint16 and (fmt != "PNG" or channels != 1):
            raise ImageError(f"{path}: {fmt} cannot store 16-bit {'colour ' if channels > 1 else ''}"
                             f"pixels here; write .tif or .npy, or choose --out-dtype uint8")
        if fmt == "JPEG" and channels not in (1, 3):
            raise ImageError(f"{path}: JPEG cannot store {channels} channels (alpha); write .png")


def _save_pil(arr: np.ndarray, fileobj, fmt: str) -> None:
    from PIL import Image

    im = Image.fromarray(arr)  # 2D uint16 becomes mode "I;16": a 16-bit PNG
    kwargs = {"quality": 95} if fmt == "JPEG" else {}
    im.save(fileobj, format=fmt, **kwargs)


def write_image(path: str, arr: np.ndarray) -> None:
    """Write ``arr`` to ``path`` atomically, in the format of its extension.

    Parameters
    ----------
    path : str
        Destination; its folder must exist. An existing file is replaced only
        once the new one is complete.
    arr : ndarray (H, W) or (H, W, C), uint8, uint16, float32 or float64
        PNG holds 8-bit gray/RGB/RGBA and 16-bit gray; JPEG and BMP 8-bit;
        TIFF and ``.npy`` any of them.

    Raises
    ------
    ImageError
        The format cannot hold the array, or the folder cannot be written.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        raise ImageError(f"{path}: unsupported output type {ext or '(no extension)'!r}; expected "
                         f"one of {', '.join(EXTENSIONS)}")
    arr = _check_array(np.ascontiguousarray(arr), path)
    _encode_check(arr, ext, path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        # The temporary name ends in the real extension so every writer
        # recognises the format; the leading dot hides it from folder scans.
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                                   suffix=".part" + ext)
        os.close(fd)
    except OSError as exc:
        raise ImageError(f"{path}: cannot write to {folder} ({_one_line(exc)})") from None
    try:
        if ext == ".npy":
            np.save(tmp, arr, allow_pickle=False)
        elif ext in TIFF_EXTENSIONS:
            import tifffile

            photometric = "rgb" if arr.ndim == 3 and arr.shape[-1] in (3, 4) else "minisblack"
            tifffile.imwrite(tmp, arr, photometric=photometric)
        else:
            _save_pil(arr, tmp, PIL_EXTENSIONS[ext])
        with open(tmp, "rb+") as f:  # on disk before the rename makes it visible
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give the result the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, (OSError, ValueError, TypeError)):
            raise ImageError(f"{path}: cannot write image ({_one_line(exc)})") from None
        raise


def to_unit_float(arr: np.ndarray, dtype=np.float32) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Split an image into colour planes scaled to [0, 1] and its alpha channel.

    Parameters
    ----------
    arr : ndarray (H, W) or (H, W, C)
    dtype : float dtype of the planes (float images keep float64 if they are)

    Returns
    -------
    planes : ndarray (C, H, W) float
        Integers divided by their maximum (255 or 65535); floats unchanged.
    alpha : ndarray (H, W) in the input dtype, or None
        The last channel of gray+alpha / RGBA images, left untouched: it is
        not part of the blurred scene.
    """
    alpha = None
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):
        arr, alpha = arr[..., :-1], arr[..., -1]
    planes = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    if arr.dtype.kind == "u":
        planes = planes.astype(dtype) / np.iinfo(arr.dtype).max
    else:
        planes = planes.astype(np.float64 if arr.dtype == np.float64 else dtype)
    return np.ascontiguousarray(planes), alpha


def from_unit_float(planes: np.ndarray, dtype, alpha: Optional[np.ndarray] = None) -> np.ndarray:
    """Inverse of :func:`to_unit_float`: planes (C, H, W) back to an image of ``dtype``.

    Integer outputs are scaled by their maximum, rounded and clipped (a
    restored image overshoots [0, 1] near edges); float outputs are returned
    unclipped. An alpha channel is converted to ``dtype`` and appended.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "u":
        top = np.iinfo(dtype).max
        out = np.clip(np.rint(planes * top), 0, top).astype(dtype)
    else:
        out = planes.astype(dtype)
    out = out[0] if out.shape[0] == 1 else np.moveaxis(out, 0, -1)
    if alpha is not None:
        a = _convert_alpha(alpha, dtype)
        out = np.concatenate([out if out.ndim == 3 else out[..., None], a[..., None]], axis=-1)
    return np.ascontiguousarray(out)


def _convert_alpha(alpha: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if alpha.dtype == dtype:
        return alpha
    unit = alpha / np.iinfo(alpha.dtype).max if alpha.dtype.kind == "u" else alpha
    if dtype.kind == "u":
        top = np.iinfo(dtype).max
        return np.clip(np.rint(unit * top), 0, top).astype(dtype)
    return unit.astype(dtype)
