"""Reading and writing image files for the command line.

Formats are chosen by file extension: PNG, JPEG and BMP through Pillow, TIFF
through tifffile, ``.npy`` through NumPy. Arrays are ``(H, W)`` (grayscale) or
``(H, W, C)`` with ``C`` in 1..4 (gray + alpha, RGB, RGBA), of dtype uint8,
uint16, float16, float32 or float64.

Before any pixel is decoded the file's header is read and its declared size
checked against a pixel limit (:data:`DEFAULT_MAX_PIXELS`, the command line's
``--max-pixels``): a decompression bomb or a 1 KB ``.npy`` that declares
200000 x 200000 pixels is refused with a message, never allocated.
:func:`open_image` maps uncompressed TIFF and ``.npy`` files into memory
instead of reading them (no limit applies: nothing is decoded).

Writes are atomic (:func:`atomic_output`): the image goes to a hidden
temporary file in the destination folder, which then replaces the destination
in one ``os.replace``; a failed or interrupted write leaves no file behind and
never a half-written one.

The module is named ``image_io`` so that it never shadows the ``imageio``
package or the standard library's ``io``.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
import stat
import tempfile
import warnings
from typing import Iterator, Optional, Tuple

import numpy as np

__all__ = ["ImageError", "EXTENSIONS", "ZARR_EXTENSION", "DEFAULT_MAX_PIXELS", "read_image",
           "open_image", "write_image", "is_image_path", "is_zarr_path",
           "path_problem", "atomic_output", "check_free_space", "memmap_output",
           "count_nonfinite", "to_unit_float", "from_unit_float", "unit_to_dtype",
           "convert_alpha", "channel_views", "check_encodable", "MEMMAP_EXTENSIONS"]

PIL_EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}
TIFF_EXTENSIONS = (".tif", ".tiff")
EXTENSIONS = tuple(PIL_EXTENSIONS) + TIFF_EXTENSIONS + (".npy",)
#: A Zarr array is a folder; it is read and written through Dask (deconv_ext.app.tiled).
ZARR_EXTENSION = ".zarr"
DTYPES = (np.uint8, np.uint16, np.float16, np.float32, np.float64)

#: Largest image (height x width, whatever the channels) decoded into memory
#: unless the caller raises it: 16384 x 16384. A float32 solve of that size
#: needs about 4 GiB; anything declared larger is far more often a corrupt or
#: malicious header than a real image (PIL's own bomb limit is 0.18 G pixels).
DEFAULT_MAX_PIXELS = 1 << 28


class ImageError(Exception):
    """An image that cannot be read or written; the message is one line."""


def is_image_path(path: str) -> bool:
    """Whether ``path`` has one of the supported extensions (case-insensitive)."""
    return os.path.splitext(path)[1].lower() in EXTENSIONS


def is_zarr_path(path: str) -> bool:
    """Whether ``path`` names a Zarr array (``*.zarr``, a trailing slash allowed)."""
    return os.path.splitext(path.rstrip(os.sep))[1].lower() == ZARR_EXTENSION


def path_problem(path: str, folder_ok: bool = False) -> Optional[str]:
    """Why ``path`` is not a regular file to read, or None if it is.

    Says "broken symbolic link", "symbolic link loop", "is a folder" or
    "not a regular file" (a FIFO would block the reader forever, a device
    never ends) instead of a plain "no such file".

    Parameters
    ----------
    path : str
    folder_ok : bool
        Accept a folder (a Zarr array is one).
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop (too many levels of symbolic links)"
        if os.path.islink(path):
            return f"a broken symbolic link (it points to {os.readlink(path)!r}, which does not exist)"
        if exc.errno == errno.ENOENT:
            return "no such file"
        return f"cannot be opened ({exc.strerror or type(exc).__name__})"
    if stat.S_ISDIR(st.st_mode):
        return None if folder_ok else "is a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a device, FIFO or socket)"
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _check_array(arr: np.ndarray, path: str) -> np.ndarray:
    if arr.dtype not in DTYPES:
        raise ImageError(f"{path}: pixel type {arr.dtype} is not supported; expected uint8, "
                         f"uint16, float16, float32 or float64")
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


def _pixels(shape: Tuple[int, ...]) -> int:
    """Pixels of an image of ``shape``: a trailing axis of 1..4 is its channels."""
    dims = shape[:-1] if len(shape) >= 3 and shape[-1] <= 4 else shape
    return math.prod(int(d) for d in dims)


def _nbytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # pragma: no cover - the loop always returns


def _check_declared(path: str, shape: Tuple[int, ...], max_pixels: Optional[int]) -> None:
    """Refuse, before decoding, an image whose header declares more than ``max_pixels``."""
    n = _pixels(tuple(shape))
    if max_pixels and n > max_pixels:
        raise ImageError(
            f"{path}: the file declares a {'x'.join(str(int(d)) for d in shape)} image "
            f"({n:,} pixels), more than the limit of {max_pixels:,} pixels decoded into memory; "
            f"if the file is genuine raise the limit with --max-pixels N (0: no limit), or "
            f"store it as an uncompressed TIFF or .npy and use --tile, which maps it instead")


def _check_dtype(dtype: np.dtype, path: str) -> None:
    if dtype not in DTYPES:
        raise ImageError(f"{path}: pixel type {dtype} is not supported; expected uint8, "
                         f"uint16, float16, float32 or float64")


def _npy_header(path: str):
    """(shape, dtype, fortran_order) of a ``.npy`` file from its header, checked against its size.

    Nothing past the header is read: a short file that declares a huge
    array is reported as truncated, not allocated.
    """
    fmt = np.lib.format
    with open(path, "rb") as f:
        version = fmt.read_magic(f)
        # Headers 2.0 and 3.0 differ only in the text encoding of the dict.
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read(f)
        offset = f.tell()
    _check_dtype(dtype, path)
    need = math.prod(shape) * dtype.itemsize
    have = os.path.getsize(path) - offset
    if have < need:
        raise ImageError(f"{path}: truncated .npy file: its header declares {shape} {dtype} "
                         f"({_nbytes(need)}) but it holds {_nbytes(have)} of data")
    return shape, dtype, fortran


@contextlib.contextmanager
def _pil_open(path: str, max_pixels: Optional[int]):
    """``PIL.Image.open`` with Pillow's own bomb check replaced by ours (the size is in the
    header, so nothing is decoded before it is checked)."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    with im:
        w, h = im.size
        _check_declared(path, (h, w), max_pixels)
        yield im


def _read_pil(path: str, max_pixels: Optional[int]) -> np.ndarray:
    if path.lower().endswith(".png") and _png_is_16bit_colour(path):
        raise ImageError(f"{path}: 16-bit colour PNG is not supported (Pillow reads it as 8-bit); "
                         f"convert it to TIFF")
    with _pil_open(path, max_pixels) as im:
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


def _samples_last(arr: np.ndarray, axes: str) -> np.ndarray:
    """A planar TIFF's (S, H, W) as (H, W, S): a view, so a memory map stays one."""
    if arr.ndim == 3 and axes == "SYX":
        return np.moveaxis(arr, 0, -1)
    return arr


def _read_tiff(path: str, max_pixels: Optional[int]) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        _check_dtype(np.dtype(series.dtype), path)
        shape = tuple(series.shape)
        _check_declared(path, shape[1:] + shape[:1] if series.axes == "SYX" else shape,
                        max_pixels)
        return _samples_last(series.asarray(), series.axes)


def _checked_path(path: str) -> str:
    """The lower-case extension of a readable image file; ImageError otherwise."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        raise ImageError(f"{path}: unsupported file type {ext or '(no extension)'!r}; expected "
                         f"one of {', '.join(EXTENSIONS)}")
    problem = path_problem(path)
    if problem:
        raise ImageError(f"{path}: {problem}")
    return ext


@contextlib.contextmanager
def _reading(path: str) -> Iterator[None]:
    """Turn the decoders' exceptions into one-line ImageErrors naming the file."""
    try:
        yield
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(f"{path}: not enough memory to read this image; use --tile with an "
                         f"uncompressed TIFF or .npy") from None
    except OSError as exc:
        why = exc.strerror if exc.strerror and exc.errno else _one_line(exc)
        raise ImageError(f"{path}: cannot read image ({why})") from None
    except (ValueError, EOFError, SyntaxError, IndexError, KeyError, TypeError) as exc:
        # Every decoder reports corrupt input with one of these; the file name
        # and the decoder's own words are what the user needs.
        raise ImageError(f"{path}: cannot read image ({_one_line(exc)})") from None


def read_image(path: str, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file into an array.

    Parameters
    ----------
    path : str
        A ``.png``, ``.jpg``/``.jpeg``, ``.bmp``, ``.tif``/``.tiff`` or ``.npy`` file.
    max_pixels : int or None, default :data:`DEFAULT_MAX_PIXELS`
        Largest height x width accepted, checked on the header before decoding;
        None or 0: no limit.

    Returns
    -------
    ndarray (H, W) or (H, W, C), dtype uint8, uint16, float16, float32 or float64
        (palette and 1-bit images are expanded to RGB(A) / 8-bit gray).

    Raises
    ------
    ImageError
        Missing, unreadable, truncated, too large or unsupported file (one-line message).
    """
    ext = _checked_path(path)
    with _reading(path):
        if ext == ".npy":
            shape, _, _ = _npy_header(path)
            _check_declared(path, shape, max_pixels)
            arr = np.load(path, allow_pickle=False)
        elif ext in TIFF_EXTENSIONS:
            arr = _read_tiff(path, max_pixels)
        else:
            arr = _read_pil(path, max_pixels)
    return _check_array(np.asarray(arr), path)


def open_image(path: str, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS
               ) -> Tuple[np.ndarray, bool]:
    """An image mapped into memory where the file allows it, else read.

    Uncompressed contiguous TIFF (``tifffile.memmap``) and ``.npy``
    (``numpy.load(mmap_mode="r")``) files are mapped read-only: pages are
    read as they are touched, so the image may be larger than memory and no
    pixel limit applies. Other files are read by :func:`read_image`.

    Returns
    -------
    (array (H, W) or (H, W, C), mapped: bool)
    """
    ext = _checked_path(path)
    if ext == ".npy":
        with _reading(path):
            _npy_header(path)
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        return _check_array(arr, path), True
    if ext in TIFF_EXTENSIONS:
        import tifffile

        try:
            arr = tifffile.memmap(path, mode="r")
            with tifffile.TiffFile(path) as tif:
                axes = tif.series[0].axes
        except (ValueError, OSError, KeyError, IndexError, TypeError):
            pass  # compressed, tiled or not contiguous: decoded below, within the limit
        else:
            return _check_array(_samples_last(arr, axes), path), True
    return read_image(path, max_pixels), False


def check_encodable(dtype, channels: int, ext: str, path: str) -> None:
    """Refuse, before anything is written, pixels the format cannot hold."""
    dtype = np.dtype(dtype)
    if ext in PIL_EXTENSIONS:
        fmt = PIL_EXTENSIONS[ext]
        if dtype.kind == "f":
            raise ImageError(f"{path}: {fmt} cannot store {dtype} pixels; write .tif or .npy, "
                             f"or choose --out-dtype uint8/uint16")
        if dtype == np.uint16 and (fmt != "PNG" or channels != 1):
            raise ImageError(f"{path}: {fmt} cannot store 16-bit {'colour ' if channels > 1 else ''}"
                             f"pixels here; write .tif or .npy, or choose --out-dtype uint8")
        if fmt == "JPEG" and channels not in (1, 3):
            raise ImageError(f"{path}: JPEG cannot store {channels} channels (alpha); write .png")


def _save_pil(arr: np.ndarray, fileobj, fmt: str) -> None:
    from PIL import Image

    im = Image.fromarray(arr)  # 2D uint16 becomes mode "I;16": a 16-bit PNG
    kwargs = {"quality": 95} if fmt == "JPEG" else {}
    im.save(fileobj, format=fmt, **kwargs)


def _tiff_photometric(shape: Tuple[int, ...]) -> str:
    return "rgb" if len(shape) == 3 and shape[-1] in (3, 4) else "minisblack"


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_output(path: str, folder: bool = False) -> Iterator[str]:
    """A hidden temporary path next to ``path`` that replaces it once the block succeeds.

    The temporary name starts with a dot (hidden from folder scans) and ends
    in ``.part`` plus the real extension (so every writer recognises the
    format). If the block raises anything, ``KeyboardInterrupt`` and the
    command line's termination signals included, the temporary file (or
    folder) is removed and the exception propagates; ``path`` is untouched.

    Parameters
    ----------
    path : str
        The destination; its folder must exist.
    folder : bool
        The output is a folder (a Zarr array): an existing folder at ``path``
        is replaced as a whole.

    Yields
    ------
    str, the temporary path to write.
    """
    dirname = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path.rstrip(os.sep))
    prefix, suffix = "." + base + ".", ".part" + os.path.splitext(base)[1]
    tmp = None
    try:
        if folder:
            tmp = tempfile.mkdtemp(dir=dirname, prefix=prefix, suffix=suffix)
        else:
            fd, tmp = tempfile.mkstemp(dir=dirname, prefix=prefix, suffix=suffix)
            os.close(fd)
    except OSError as exc:
        if tmp is not None:
            _remove(tmp)
        raise ImageError(f"{path}: cannot write to {dirname} ({_one_line(exc)})") from None
    try:
        yield tmp
        try:
            if not folder:
                with open(tmp, "rb+") as f:  # on disk before the rename makes it visible
                    os.fsync(f.fileno())
            # mkstemp / mkdtemp create 0600 / 0700; give the result the usual permissions.
            os.chmod(tmp, (0o777 if folder else 0o666) & ~_umask())
            if folder and os.path.isdir(path) and not os.path.islink(path):
                old = tmp + ".old"
                os.rename(path, old)
                os.rename(tmp, path)
                _remove(old)
            else:
                os.replace(tmp, path)
        except OSError as exc:
            raise ImageError(f"{path}: cannot write image ({_one_line(exc)})") from None
    except BaseException:
        _remove(tmp)
        raise


def check_free_space(folder: str, nbytes: int, path: str) -> None:
    """ImageError if ``folder``'s file system has less than ``nbytes`` free.

    A memory-mapped output on a full disk would die with SIGBUS while its
    pages are written; this says so before the file is created.
    """
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if nbytes > free:
        raise ImageError(f"{path}: the output needs {_nbytes(nbytes)} of disk but "
                         f"{folder} has {_nbytes(free)} free")


#: Formats :func:`memmap_output` can create.
MEMMAP_EXTENSIONS = TIFF_EXTENSIONS + (".npy",)


def memmap_output(path: str, shape: Tuple[int, ...], dtype) -> np.memmap:
    """Create a writeable memory-mapped image file (uncompressed TIFF or ``.npy``).

    Parameters
    ----------
    path : str
        Ends in ``.tif``, ``.tiff`` or ``.npy`` (a temporary name from
        :func:`atomic_output`, usually).
    shape : (H, W) or (H, W, C)
    dtype : one of the supported pixel types
    """
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=shape)
    if ext not in TIFF_EXTENSIONS:
        raise ImageError(f"{path}: cannot map a {ext or '(no extension)'} file; expected "
                         f"{', '.join(MEMMAP_EXTENSIONS)}")
    import tifffile

    return tifffile.memmap(path, shape=tuple(shape), dtype=np.dtype(dtype),
                           photometric=_tiff_photometric(tuple(shape)))


def write_image(path: str, arr: np.ndarray) -> None:
    """Write ``arr`` to ``path`` atomically, in the format of its extension.

    Parameters
    ----------
    path : str
        Destination; its folder must exist. An existing file is replaced only
        once the new one is complete.
    arr : ndarray (H, W) or (H, W, C), uint8, uint16, float16, float32 or float64
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
    check_encodable(arr.dtype, 1 if arr.ndim == 2 else arr.shape[-1], ext, path)
    with atomic_output(path) as tmp:
        try:
            if ext == ".npy":
                np.save(tmp, arr, allow_pickle=False)
            elif ext in TIFF_EXTENSIONS:
                import tifffile

                tifffile.imwrite(tmp, arr, photometric=_tiff_photometric(arr.shape))
            else:
                _save_pil(arr, tmp, PIL_EXTENSIONS[ext])
        except (OSError, ValueError, TypeError) as exc:
            raise ImageError(f"{path}: cannot write image ({_one_line(exc)})") from None


def count_nonfinite(arr: np.ndarray, block: int = 1 << 24) -> int:
    """Number of NaN / infinite values of a float array, read in blocks along axis 0.

    A memory map is read a band of rows at a time, so the check needs no
    more memory than ``block`` values (integer arrays have none: 0).
    """
    if np.dtype(arr.dtype).kind != "f" or arr.size == 0:
        return 0
    step = max(1, block // max(1, arr.size // arr.shape[0]))
    return sum(int(arr[i:i + step].size - np.count_nonzero(np.isfinite(arr[i:i + step])))
               for i in range(0, arr.shape[0], step))


def channel_views(arr: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Views of an image's colour planes ``(C, H, W)`` and its alpha channel ``(H, W)``.

    No copy: on a memory map both stay mapped. Gray + alpha and RGBA images
    have their last channel as alpha; others have none (None).
    """
    alpha = None
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):
        arr, alpha = arr[..., :-1], arr[..., -1]
    planes = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    return planes, alpha


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
    planes, alpha = channel_views(arr)
    if arr.dtype.kind == "u":
        planes = planes.astype(dtype) / np.iinfo(arr.dtype).max
    else:
        planes = planes.astype(np.float64 if arr.dtype == np.float64 else dtype)
    return np.ascontiguousarray(planes), alpha


def unit_to_dtype(unit: np.ndarray, dtype) -> np.ndarray:
    """Values on the [0, 1] scale as pixels of ``dtype``.

    Integers: scaled by their maximum, rounded and clipped (a restored image
    overshoots [0, 1] near edges). Floats: converted, unclipped.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "u":
        top = np.iinfo(dtype).max
        return np.clip(np.rint(unit * top), 0, top).astype(dtype)
    return np.asarray(unit).astype(dtype)


def from_unit_float(planes: np.ndarray, dtype, alpha: Optional[np.ndarray] = None) -> np.ndarray:
    """Inverse of :func:`to_unit_float`: planes (C, H, W) back to an image of ``dtype``.

    Integer outputs are scaled by their maximum, rounded and clipped (a
    restored image overshoots [0, 1] near edges); float outputs are returned
    unclipped. An alpha channel is converted to ``dtype`` and appended.
    """
    dtype = np.dtype(dtype)
    out = unit_to_dtype(planes, dtype)
    out = out[0] if out.shape[0] == 1 else np.moveaxis(out, 0, -1)
    if alpha is not None:
        a = convert_alpha(alpha, dtype)
        out = np.concatenate([out if out.ndim == 3 else out[..., None], a[..., None]], axis=-1)
    return np.ascontiguousarray(out)


def convert_alpha(alpha: np.ndarray, dtype) -> np.ndarray:
    """An alpha channel in another pixel type (same [0, 1] meaning)."""
    dtype = np.dtype(dtype)
    if alpha.dtype == dtype:
        return np.asarray(alpha)
    unit = alpha / np.iinfo(alpha.dtype).max if alpha.dtype.kind == "u" else alpha
    return unit_to_dtype(unit, dtype)
