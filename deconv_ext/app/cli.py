"""The command line: ``python -m deconv_ext`` / ``deconv-ext``.

Subcommands:

* ``demo``   blur a built-in image with a known PSF plus noise, restore it
  with each method, print a table and write a side-by-side figure;
* ``deblur`` restore image files (or folders of them) given their PSF;
* ``bench``  time the library against the bare FFT round trip;
* ``info``   versions, the extension's FFT route, devices, the FFT-choice cache.

Every failure the user can cause (unreadable file, bad PSF, unwritable
folder, missing optional package, ...) prints one line
``deconv-ext: error: ...`` on stderr and makes the exit status 2; in a batch
the other images are still processed.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

from .. import __version__
from ..validation import BOUNDARIES, METHODS, SOLVERS
from ..functional import deconvolve
from .bench import run_bench
from .demo import run_demo
from .errors import EXIT_FAIL, EXIT_OK, PROG, UsageError, error, require_optional
from .image_io import (EXTENSIONS, ImageError, from_unit_float, is_image_path, read_image,
                       to_unit_float, write_image)
from .info import describe, format_info
from .options import boundary_problem, resolve_device, solver_kwargs
from .psf_spec import SPEC_HELP, PSFSpecError, parse_spec

__all__ = ["main", "build_parser"]

#: The optional packages (the ``cli`` extra) each command imports.
NEEDS = {"deblur": ("PIL", "tifffile", "tqdm"),
         "demo": ("skimage", "matplotlib", "PIL", "tifffile")}


# --------------------------------------------------------------------------
# the parser

class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the hand-made layout of descriptions and show every default."""


def _add_solver_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--psf", metavar="SPEC", default="gaussian:2",
                   help=f"the blur's point-spread function: {SPEC_HELP}")
    p.add_argument("--method", choices=METHODS, default="tikhonov",
                   help="tikhonov: conj(K) Y / (|K|^2 + eps |R|^2); pinv: the Moore-Penrose "
                        "pseudo-inverse Y / K where |K| > rcond * max|K|")
    p.add_argument("--eps", type=float, default=1e-2,
                   help="regularisation weight (about the noise-to-signal power ratio; larger = "
                        "smoother, less noise)")
    p.add_argument("--reg", choices=("none", "laplacian"), default="none",
                   help="regulariser R: identity, or the 3x3 Laplacian (penalises roughness; "
                        "same filter as skimage.restoration.wiener)")
    p.add_argument("--rcond", type=float, default=None,
                   help="pinv cut-off relative to the largest |K| (default: 10 * max(H, W) * "
                        "machine epsilon, i.e. almost no cut-off)")
    p.add_argument("--boundary", choices=BOUNDARIES, default="circular",
                   help="what the blur assumed beyond the image edges (names as in "
                        "torch.nn.functional.pad; 'symmetric' repeats the edge pixel)")
    p.add_argument("--solver", default=None, choices=SOLVERS,
                   help="how to solve (passed to deconvolve(solver=...)): 'fft' is the fast "
                        "solve (exact for circular; pads the image otherwise), 'cg' the exact "
                        "iterative solve for any boundary, 'dct' the exact direct solve for "
                        "boundary=symmetric with a symmetric PSF (default: the library's)")
    p.add_argument("--device", default="auto",
                   help="'cpu', 'cuda', 'cuda:N', or 'auto' (CUDA when available)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``deconv-ext`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=_Formatter,
        description="Undo a known 2D blur (deconvolution) with deconv_ext: exact "
                    "pseudo-inverse or Tikhonov/Wiener inverse in the Fourier domain.",
        epilog="examples:\n"
               f"  {PROG} demo                        restore a built-in photo, print a table, "
               "write a figure\n"
               f"  {PROG} deblur photo.png -o out/ --psf gaussian:1.5\n"
               f"  {PROG} deblur scans/ -o restored/ --psf motion:9,30 --reg laplacian\n"
               f"  {PROG} bench --quick\n"
               f"  {PROG} info --json\n\n"
               "Exit status: 0 on success, 2 if anything failed (one line per failure on stderr).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", formatter_class=_Formatter, help="blur a built-in image, restore it, compare",
        description="Blur a built-in image (from scikit-image, no network) with a known PSF, "
                    "add Gaussian noise, restore it with each method (and each boundary the "
                    "library supports), print PSNR / SSIM / time, and write one PNG with the "
                    "blurred, restored and error images.")
    demo.add_argument("--image", default="camera",
                      help="'camera' (grayscale), 'astronaut' (RGB), or an image file")
    demo.add_argument("--psf", metavar="SPEC", default="gaussian:2",
                      help="the known blur (same syntax as deblur --psf)")
    demo.add_argument("--noise", type=float, default=0.005,
                      help="standard deviation of the added noise, image in [0, 1]")
    demo.add_argument("--eps", type=float, default=1e-2, help="Tikhonov weight")
    demo.add_argument("--edges", choices=("cropped", "periodic"), default="cropped",
                      help="cropped: blur a larger scene and cut a window out of it, as a "
                           "camera does (no boundary model is exact; shows why the boundary "
                           "matters); periodic: blur with the circular model, which the default "
                           "solver inverts exactly")
    demo.add_argument("--seed", type=int, default=0, help="noise seed")
    demo.add_argument("--out", default=os.path.join("out", "deconv_ext_demo.png"),
                      help="where to write the figure (PNG)")
    demo.add_argument("--device", default="auto", help="'cpu', 'cuda' or 'auto'")

    deblur = sub.add_parser(
        "deblur", formatter_class=_Formatter, help="restore image files given their PSF",
        description="Restore blurred images given their point-spread function.\n\n"
                    "Inputs: PNG, JPEG, BMP, TIFF or .npy files, or folders of them (not "
                    "recursive); grayscale or colour (each channel restored on its own, alpha "
                    "kept as is); 8-bit, 16-bit or float pixels. Outputs keep the input's name, "
                    "format and bit depth unless --format / --suffix / --out-dtype say "
                    "otherwise; each is written to a temporary file first and renamed, so a "
                    "failure leaves nothing behind, and an input is never overwritten.")
    deblur.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files or folders")
    deblur.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="output folder (created if missing), or a file name when there "
                             "is exactly one input file")
    _add_solver_options(deblur)
    deblur.add_argument("--format", default=None, metavar="EXT",
                        help="output file type for folder outputs, e.g. png, tif, npy "
                             "(default: the input's)")
    deblur.add_argument("--suffix", default="", help="added to each output's file stem")
    deblur.add_argument("--out-dtype", choices=("keep", "uint8", "uint16", "float32", "float64"),
                        default="keep", help="pixel type of the outputs (integers hold [0, 1] "
                                             "scaled to their maximum, clipped)")
    progress = deblur.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="always show the progress bar (default: when stderr is a terminal)")
    progress.add_argument("--no-progress", dest="progress", action="store_false",
                          help="never show the progress bar")
    deblur.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")

    bench = sub.add_parser(
        "bench", formatter_class=_Formatter, help="time the library on this machine",
        description="Time deconvolution against torch's bare rfft2 + irfft2 round trip (the "
                    "floor) on this machine. In a source checkout this runs the benchmark "
                    "script of benchmarks/ for the device (bench_cpu.py, or bench_gpu.py for "
                    "CUDA); otherwise, or with --builtin, a small table built into the "
                    "package.")
    bench.add_argument("--device", default="cpu", help="'cpu' or 'cuda'")
    bench.add_argument("--quick", action="store_true", help="fewer shapes and rounds")
    bench.add_argument("--builtin", action="store_true",
                       help="use the built-in table even in a source checkout")

    info = sub.add_parser(
        "info", formatter_class=_Formatter, help="versions, FFT route, devices, caches",
        description="Print the versions of deconv_ext, torch, Triton and Python; whether the "
                    "C++ extension is loaded and which CPU FFT it calls; the CUDA devices and "
                    "whether the Triton kernels can run; where the FFT-choice cache lives.")
    info.add_argument("--json", action="store_true", help="print one JSON object instead")
    return parser


# --------------------------------------------------------------------------
# deblur

@dataclass
class Job:
    """One input image, where its result goes, or why it cannot be processed."""

    src: str
    dst: Optional[str] = None
    problem: Optional[str] = None


def _expand_inputs(paths: Sequence[str]) -> List[Job]:
    jobs: List[Job] = []
    for p in paths:
        if os.path.isdir(p):
            names = sorted(n for n in os.listdir(p)
                           if not n.startswith(".") and is_image_path(n)
                           and os.path.isfile(os.path.join(p, n)))
            if not names:
                jobs.append(Job(p, problem=f"{p}: no image files in this folder"))
            jobs.extend(Job(os.path.join(p, n)) for n in names)
        elif not os.path.exists(p):
            jobs.append(Job(p, problem=f"{p}: no such file or folder"))
        else:
            jobs.append(Job(p))
    return jobs


def _probe_writable(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write to output folder {folder!r} "
                         f"({exc.strerror or type(exc).__name__})") from None


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def plan_outputs(jobs: List[Job], output: str, fmt: Optional[str], suffix: str) -> None:
    """Fill in each job's destination; UsageError if the output cannot work at all."""
    if fmt is not None:
        fmt = "." + fmt.lower().lstrip(".")
        if fmt not in EXTENSIONS:
            raise UsageError(f"--format {fmt[1:]!r} is not supported; expected one of "
                             f"{', '.join(e[1:] for e in EXTENSIONS)}")
    single_file = (len(jobs) == 1 and jobs[0].problem is None and is_image_path(output)
                   and not os.path.isdir(output))
    if single_file:
        _probe_writable(os.path.dirname(os.path.abspath(output)))
        dsts = [output]
    else:
        if is_image_path(output) and not os.path.isdir(output):
            raise UsageError(f"-o {output!r} names a file but there are {len(jobs)} inputs; give "
                             f"a folder")
        _probe_writable(output)
        dsts = []
        for job in jobs:
            stem, ext = os.path.splitext(os.path.basename(job.src))
            dsts.append(os.path.join(output, stem + suffix + (fmt or ext)))
    seen = {}
    for job, dst in zip(jobs, dsts):
        if job.problem:
            continue
        if _same_file(job.src, dst):
            job.problem = (f"{job.src}: the output would overwrite the input; choose another -o "
                           f"or a --suffix")
        elif os.path.realpath(dst) in seen:
            job.problem = (f"{job.src}: its output {dst} is also the output of "
                           f"{seen[os.path.realpath(dst)]}; use --suffix or separate runs")
        else:
            seen[os.path.realpath(dst)] = job.src
            job.dst = dst


def deblur_file(src: str, dst: str, psf, device, out_dtype: str, solve_kwargs: dict) -> None:
    """Read ``src``, deconvolve every colour plane, write ``dst`` atomically.

    Raises ImageError / ValueError with a one-line message on failure.
    """
    arr = read_image(src)
    planes, alpha = to_unit_float(arr)
    H, W = planes.shape[-2:]
    kh, kw = psf.shape[-2:]
    if kh > H or kw > W:
        raise ValueError(f"{src}: the PSF ({kh}x{kw}) is larger than the image ({H}x{W})")
    y = torch.from_numpy(planes).to(device)
    x = deconvolve(y, psf.to(device=device, dtype=y.dtype), **solve_kwargs)
    dtype = arr.dtype if out_dtype == "keep" else np.dtype(out_dtype)
    write_image(dst, from_unit_float(x.cpu().numpy(), dtype, alpha))


def cmd_deblur(args) -> int:
    """``deconv-ext deblur``: returns the exit status."""
    require_optional("deblur", NEEDS["deblur"])
    from tqdm import tqdm  # optional (the cli extra), checked above

    device = resolve_device(args.device)
    try:
        psf = parse_spec(args.psf)
    except PSFSpecError as exc:
        raise UsageError(str(exc)) from None
    if args.eps < 0 or args.eps != args.eps:
        raise UsageError(f"--eps {args.eps!r}: expected a number >= 0")
    reason = boundary_problem(args.boundary, args.solver, psf)
    if reason:
        what = f"--boundary {args.boundary}" + (f" --solver {args.solver}" if args.solver else "")
        raise UsageError(f"{what} --psf {args.psf}: {reason}")
    solve = dict(eps=args.eps, method=args.method, reg=None if args.reg == "none" else args.reg,
                 rcond=args.rcond, **solver_kwargs(args.boundary, args.solver))
    jobs = _expand_inputs(args.inputs)
    plan_outputs(jobs, args.output, args.format, args.suffix)

    failures = []
    bar = tqdm(jobs, desc="deblur", unit="img", file=sys.stderr, dynamic_ncols=True,
               disable=None if args.progress is None else not args.progress)
    for job in bar:
        problem = job.problem
        if problem is None:
            try:
                deblur_file(job.src, job.dst, psf, device, args.out_dtype, solve)
            except (ImageError, ValueError, TypeError, NotImplementedError, OSError,
                    RuntimeError) as exc:
                # One bad image must not stop the batch; the library's and the
                # readers' messages already name what was wrong.
                msg = " ".join(str(exc).split())
                problem = msg if msg.startswith(job.src) else f"{job.src}: {msg}"
        if problem:
            failures.append(job.src)
            error(problem, write=lambda s: tqdm.write(s, file=sys.stderr))
        elif not args.quiet:
            tqdm.write(f"{job.src} -> {job.dst}", file=sys.stdout)
    done = len(jobs) - len(failures)
    if failures and len(jobs) > 1:
        error(f"{len(failures)} of {len(jobs)} inputs failed: {', '.join(failures)}")
    elif not args.quiet and not failures:
        print(f"deblurred {done} image{'s' if done != 1 else ''}")
    return EXIT_FAIL if failures else EXIT_OK


# --------------------------------------------------------------------------
# demo, bench and info (their work lives in their own modules)

def cmd_demo(args) -> int:
    require_optional("demo", NEEDS["demo"])
    try:
        psf = parse_spec(args.psf)
    except PSFSpecError as exc:
        raise UsageError(str(exc)) from None
    device = resolve_device(args.device)
    run_demo(image=args.image, psf=psf, psf_name=args.psf, noise=args.noise, eps=args.eps,
             edges=args.edges, seed=args.seed, out=args.out, device=device)
    return EXIT_OK


def cmd_bench(args) -> int:
    resolve_device(args.device)
    return run_bench(device=args.device, quick=args.quick, builtin=args.builtin)


def cmd_info(args) -> int:
    print(format_info(describe(), as_json=args.json))
    return EXIT_OK


COMMANDS = {"demo": cmd_demo, "deblur": cmd_deblur, "bench": cmd_bench, "info": cmd_info}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 failure).

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_FAIL
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        error(str(exc))
        return EXIT_FAIL
    except KeyboardInterrupt:
        error("interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
