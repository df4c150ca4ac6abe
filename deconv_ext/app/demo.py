"""The ``demo`` subcommand: blur a known image, restore it every way, compare.

The test image ships with scikit-image (``skimage.data``), so the demo needs
no network. The blur is the library's own circular model (``edges=
"periodic"``, which the circular solver inverts exactly) or a window cut out
of a larger blurred scene (``edges="cropped"``, what a camera records: no
boundary model is exact there, and the circular one rings at the edges).

eps defaults to ``"auto"``: every regularised row chooses its own eps from
the blurred image (the rule that ``deconvolve(eps="auto")`` runs) and the
table prints it next to the PSNR. The exact solvers (``dct``, ``cg``) take no
rule: they get the eps the fast solve's rule chooses for the same boundary.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import List, Optional, Union

import numpy as np
import torch

from ..validation import BOUNDARIES
from ..functional import convolve, deconvolve
from ..psf import gaussian
from .errors import UsageError
from .image_io import read_image, to_unit_float

__all__ = ["run_demo", "load_image", "psnr", "ssim", "Result"]


@dataclass
class Result:
    """One restoration: its label, quality and one-shot time."""

    label: str
    restored: Optional[np.ndarray]
    psnr: float = float("nan")
    ssim: float = float("nan")
    ms: float = float("nan")
    note: str = ""
    eps: str = ""


def load_image(name: str) -> np.ndarray:
    """A built-in image (``camera``, ``astronaut``, any ``skimage.data`` name) or a file,
    as float32 planes ``(C, H, W)`` in [0, 1]."""
    if os.path.exists(name):
        arr = read_image(name)
    else:
        import skimage.data  # optional (the cli extra)

        loader = getattr(skimage.data, name, None)
        if loader is None or not callable(loader):
            raise UsageError(f"--image {name!r}: neither a file nor a skimage.data image "
                             f"(try camera or astronaut)")
        arr = np.asarray(loader())
    planes, _ = to_unit_float(arr)
    return planes.astype(np.float32)


def psnr(x: np.ndarray, truth: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    mse = float(np.mean((x.astype(np.float64) - truth) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def ssim(x: np.ndarray, truth: np.ndarray) -> float:
    """Structural similarity (scikit-image), mean over the planes (C, H, W)."""
    from skimage.metrics import structural_similarity  # optional (the cli extra)

    vals = [structural_similarity(t, np.clip(p, 0, 1), data_range=1.0) for p, t in zip(x, truth)]
    return float(np.mean(vals))


def _blur(sharp: torch.Tensor, psf: torch.Tensor, edges: str):
    """The observation model; returns (truth, blurred) as tensors."""
    if edges == "periodic":
        return sharp, convolve(sharp, psf)
    import scipy.ndimage as ndi

    # Blur the whole scene (its own borders mirrored), then keep an inner
    # window: the pixels beyond the window's edges are real scene content
    # that no boundary model knows.
    k = psf.double().numpy()
    blurred = np.stack([ndi.convolve(p, k, mode="reflect") for p in sharp.double().numpy()])
    m = max(psf.shape) + 16
    crop = (slice(None), slice(m, -m), slice(m, -m))
    return sharp[crop].contiguous(), torch.from_numpy(blurred[crop]).to(sharp.dtype)


def _configs(eps: Union[float, str], psf: torch.Tensor, edges: str = "cropped",
             noise: float = 0.005):
    """(label, deconvolve kwargs) of each restoration shown.

    Each row uses a boundary model that fits the observation: the circular
    one for ``edges="periodic"``, ``reflect`` (and the other non-circular
    ones) for a cropped window, where the circular model's wrap-around seam
    puts broadband power where ``|K| ~ 0`` and no eps brings the result far
    above the blurred input (camera, gaussian:2, noise 0.005: 26.0 dB at the
    best fixed eps against 25.6 blurred). The unregularised pseudo-inverse
    (default rcond) is shown only without noise on the periodic model, where
    it is exact; with noise it amplifies it by ``1 / |K|`` and is no
    restoration.
    """
    if edges == "periodic":
        rows = [("tikhonov", dict(eps=eps)),
                ("laplacian", dict(eps=eps, reg="laplacian")),
                ("pinv rcond=0.1", dict(method="pinv", rcond=0.1))]
        if noise == 0:
            rows.append(("pinv (default rcond)", dict(method="pinv")))
    else:
        rows = [("tikhonov, reflect", dict(eps=eps, boundary="reflect")),
                ("pinv rcond=0.1, reflect", dict(method="pinv", rcond=0.1, boundary="reflect"))]
    rows += [(f"laplacian, {b}", dict(eps=eps, reg="laplacian", boundary=b))
             for b in BOUNDARIES if b != "circular"]
    # The exact solvers, where they are quick: the DCT solve needs a PSF
    # symmetric in each axis, and CG converges fast on such a PSF thanks to
    # its DCT preconditioner (on a motion blur it can take minutes).
    symmetric = bool(torch.equal(psf, psf.flip(-1)) and torch.equal(psf, psf.flip(-2)))
    if symmetric:
        rows += [(f"laplacian, symmetric, {solver}",
                  dict(eps=eps, reg="laplacian", boundary="symmetric", solver=solver))
                 for solver in ("dct", "cg")]
    return rows


def _time_ms(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def _eps_text(eps) -> str:
    """One eps per plane as the table shows it: ``1.2e-03``, or ``min-max`` over planes."""
    v = [float(e) for e in torch.as_tensor(eps).reshape(-1)]
    lo, hi = min(v), max(v)
    return f"{lo:.2g}" if f"{lo:.2g}" == f"{hi:.2g}" else f"{lo:.2g}-{hi:.2g}"


def _chosen_for_exact(blurred: torch.Tensor, psf: torch.Tensor, kw: dict) -> dict:
    """An exact solver's kwargs with a rule replaced by the eps the fast solve's rule
    chooses for the same boundary (one eps for all planes: the exact solvers take a float)."""
    if not isinstance(kw.get("eps"), str) or kw.get("solver") in (None, "fft"):
        return kw
    _, info = deconvolve(blurred, psf, **{**kw, "solver": "fft"}, eps_per="sample",
                         return_info=True)
    return {**kw, "eps": float(info.eps.reshape(-1)[0])}


def restore_all(blurred: torch.Tensor, truth: np.ndarray, psf: torch.Tensor,
                eps: Union[float, str], edges: str = "cropped",
                noise: float = 0.005) -> List[Result]:
    """Run every restoration on ``blurred``; one Result per row of the table
    (``edges`` and ``noise`` choose the rows, see :func:`_configs`)."""
    configs = _configs(eps, psf.cpu(), edges, noise)
    results = []
    for label, kw in configs:
        try:
            kw = _chosen_for_exact(blurred, psf, kw)
            rule = isinstance(kw.get("eps"), str)

            def once(kw=kw, rule=rule):
                out = deconvolve(blurred, psf, return_info=rule, **kw)
                if blurred.is_cuda:  # time the work, not the launch
                    torch.cuda.synchronize()
                return out

            t0 = time.perf_counter()
            out = once()
            first = (time.perf_counter() - t0) * 1e3
        except (NotImplementedError, ValueError) as exc:  # a boundary may refuse this PSF
            results.append(Result(label, None, note=" ".join(str(exc).split())[:60]))
            continue
        x, info = out if rule else (out, None)
        shown = (_eps_text(info.eps) if rule
                 else "" if "eps" not in kw else _eps_text(kw["eps"]))
        # Repeat only the quick ones (best of a few hides one-off costs); an
        # iterative solve that takes seconds is timed once.
        ms = first if first > 200 else min(first, _time_ms(once))
        x = x.cpu().numpy()
        results.append(Result(label, x, psnr(x, truth), ssim(x, truth), ms, eps=shown))
    return results


def format_table(blurred_row: Result, results: List[Result]) -> str:
    """The printed table: one row per restoration."""
    lines = [f"{'method':<30} {'PSNR dB':>8} {'eps':>15} {'SSIM':>6} {'time ms':>8}", "-" * 72]
    for r in [blurred_row] + results:
        if r.restored is None and r.note:
            lines.append(f"{r.label:<30} {'-':>8} {'-':>15} {'-':>6} {'-':>8}  ({r.note})")
            continue
        ms = "" if np.isnan(r.ms) else f"{r.ms:8.1f}"
        s = "   n/a" if np.isnan(r.ssim) else f"{r.ssim:6.3f}"
        lines.append(f"{r.label:<30} {r.psnr:8.2f} {r.eps or '-':>15} {s} {ms:>8}")
    return "\n".join(lines)


def _display(planes: np.ndarray) -> np.ndarray:
    img = np.clip(planes, 0, 1)
    return img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)


def save_figure(path: str, truth: np.ndarray, blurred_row: Result, results: List[Result],
                title: str, psf_img: np.ndarray) -> str:
    """Write the side-by-side PNG (top: images, bottom: |error|); returns its path."""
    import matplotlib  # optional (the cli extra)

    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt

    shown = [Result("sharp (truth)", truth, float("inf"))] + [blurred_row] + \
            [r for r in results if r.restored is not None]
    n = len(shown)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.6), squeeze=False)
    for j, r in enumerate(shown):
        top, bottom = axes[0, j], axes[1, j]
        gray = r.restored.shape[0] == 1
        top.imshow(_display(r.restored), cmap="gray" if gray else None, vmin=0, vmax=1)
        sub = "" if np.isinf(r.psnr) else f"\n{r.psnr:.1f} dB" + (f", eps {r.eps}" if r.eps
                                                                   else "")
        top.set_title(r.label + sub, fontsize=9)
        if j == 0:  # no error to show for the truth: show the PSF instead
            bottom.imshow(psf_img, cmap="gray")
            bottom.set_title(f"PSF {psf_img.shape[0]}x{psf_img.shape[1]}", fontsize=8)
        else:
            err = np.abs(r.restored - truth).mean(axis=0)
            bottom.imshow(err, cmap="magma", vmin=0, vmax=0.2)
            bottom.set_title("|error| (black 0, white 0.2)" if j == 1 else "|error|", fontsize=8)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # Atomic like every other output: render to a temporary file, then rename.
    tmp = os.path.join(folder, "." + os.path.basename(path) + ".part")
    try:
        fig.savefig(tmp, dpi=80, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def run_demo(image: str = "camera", psf: Optional[torch.Tensor] = None, psf_name: str = "",
             noise: float = 0.005, eps: Union[float, str] = "auto", edges: str = "cropped",
             seed: int = 0,
             out: str = "out/deconv_ext_demo.png", device=None, verbose: bool = True):
    """Blur ``image`` with ``psf`` plus noise, restore it every way, print and plot.

    Parameters
    ----------
    image : str
        ``skimage.data`` name or an image file.
    psf : Tensor (kh, kw), sums to 1
    psf_name : str
        How to name the PSF in the printed header and figure title.
    noise : float
        Standard deviation of the Gaussian noise added to the [0, 1] image.
    eps : float or str
        Tikhonov weight of the regularised rows, or a rule that chooses it
        per row and plane (default ``"auto"``; printed next to the PSNR).
    edges : {"periodic", "cropped"}
        The observation model (see the module docstring).
    seed : int
        Seed of the noise.
    out : str
        Figure path (PNG); its folder is created.
    device : torch.device, optional

    Returns
    -------
    (results, figure path)
    """
    device = device or torch.device("cpu")
    sharp = torch.from_numpy(load_image(image))
    if psf is None:
        psf, psf_name = gaussian(2.0), "gaussian:2"
    if psf.shape[-2] * 2 > sharp.shape[-2] or psf.shape[-1] * 2 > sharp.shape[-1]:
        raise UsageError(f"--psf {psf_name}: the PSF {tuple(psf.shape)} is too large for the "
                         f"image {tuple(sharp.shape[-2:])}")
    if not noise >= 0:
        raise UsageError(f"--noise {noise!r}: expected a number >= 0")
    truth, clean = _blur(sharp, psf, edges)
    gen = torch.Generator().manual_seed(seed)
    blurred = clean + noise * torch.randn(clean.shape, generator=gen, dtype=clean.dtype)
    truth_np = truth.numpy().astype(np.float64)
    b_np = blurred.numpy()
    blurred_row = Result("blurred + noise", b_np, psnr(b_np, truth_np), ssim(b_np, truth_np))
    results = restore_all(blurred.to(device), truth_np, psf.to(device), eps, edges, noise)
    header = (f"deconv_ext demo: {image} {tuple(truth.shape)}, psf {psf_name} "
              f"{tuple(psf.shape)}, noise sigma {noise:g}, {edges} edges, eps {eps}, "
              f"device {device}")
    if verbose:
        print(header)
        print(format_table(blurred_row, results))
    path = save_figure(out, truth_np, blurred_row, results, header, psf.cpu().numpy())
    if verbose:
        print(f"figure: {os.path.abspath(path)}")
    return results, path
