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
the other images are still processed. Ctrl-C, SIGTERM and SIGHUP stop the
command with 128 + the signal's number (130, 143, 129), leaving no partial
output behind.
"""
from __future__ import annotations

import argparse
import os
import signal
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
from .errors import (EXIT_FAIL, EXIT_OK, PROG, Terminated, UsageError, error, require_optional,
                     terminate_cleanly)
from .image_io import (DEFAULT_MAX_PIXELS, EXTENSIONS, ZARR_EXTENSION, ImageError,
                       count_nonfinite, from_unit_float, is_image_path, is_zarr_path,
                       path_problem, read_image, to_unit_float, write_image)
from .info import describe, format_info
from .options import (boundary_problem, format_eps, parse_eps, parse_noise_std, resolve_device,
                      rule_problem, solver_kwargs)
from .psf_spec import SPEC_HELP, PSFSpecError, parse_spec
from .tiled import (check_finite_input, check_psf_fits, deblur_tiled, deblur_zarr, nonfinite_result,
                    parse_overlap, parse_tile, tiled_problem, tiled_solve, zarr_problem)

__all__ = ["main", "build_parser"]

#: The optional packages (the ``cli`` extra) each command imports.
NEEDS = {"deblur": ("PIL", "tifffile", "tqdm"),
         "demo": ("skimage", "matplotlib", "PIL", "tifffile")}


# --------------------------------------------------------------------------
# the parser

class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the hand-made layout of descriptions and show every default (but None: those
    options say in their help what happens when they are not given)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _add_solver_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--psf", metavar="SPEC", default="gaussian:2",
                   help=f"the blur's point-spread function: {SPEC_HELP}")
    p.add_argument("--method", choices=METHODS, default="tikhonov",
                   help="tikhonov: conj(K) Y / (|K|^2 + eps |R|^2); pinv: the Moore-Penrose "
                        "pseudo-inverse Y / K where |K| > rcond * max|K|")
    p.add_argument("--eps", default="0.01", metavar="EPS|RULE",
                   help="regularisation weight (about the noise-to-signal power ratio; larger = "
                        "smoother, less noise), or a rule that chooses it per image plane and "
                        "prints it: auto (with --reg laplacian gcv, or upre off the circular "
                        "boundary; else discrepancy), gcv "
                        "(generalised cross-validation), discrepancy (residual = noise level), "
                        "lcurve, upre, risk; rules need the whole image (not --tile or .zarr)")
    p.add_argument("--noise-std", default=None, metavar="SIGMA",
                   help="with --eps discrepancy, upre, risk or auto: the noise's standard "
                        "deviation on the [0, 1] pixel scale (default: estimated from each "
                        "image)")
    p.add_argument("--reg", choices=("none", "laplacian"), default="none",
                   help="regulariser R: identity, or the 3x3 Laplacian (penalises roughness; "
                        "same filter as skimage.restoration.wiener)")
    p.add_argument("--rcond", type=float, default=None,
                   help="pinv cut-off relative to the largest |K| (default: 10 * max(H, W) * "
                        "machine epsilon, i.e. almost no cut-off)")
    p.add_argument("--boundary", choices=BOUNDARIES, default=None,
                   help="what the blur assumed beyond the image edges (names as in "
                        "torch.nn.functional.pad; 'symmetric' repeats the edge pixel); default "
                        "circular, or reflect for tiled solves (--tile, .zarr inputs), where "
                        "circular has no meaning")
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
               "Exit status: 0 on success, 2 if anything failed (one line per failure on "
               "stderr); 130 (Ctrl-C), 143 (SIGTERM) or 129 (SIGHUP) when stopped, with no "
               "partial output left behind.")
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
    demo.add_argument("--eps", default="auto", metavar="EPS|RULE",
                      help="Tikhonov weight of the regularised rows, or a rule that chooses it "
                           "per row from the blurred image (auto, gcv, discrepancy, lcurve, "
                           "upre, risk); the eps used is printed next to the PSNR")
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
                    "failure leaves nothing behind, and an input is never overwritten. Images "
                    "with NaN or infinite pixels are refused.\n\n"
                    "Images larger than memory: --tile TH[,TW] solves tile by tile, reading "
                    "uncompressed TIFF and .npy inputs through a memory map and writing TIFF and "
                    ".npy outputs tile by tile into one; a .zarr input (with the dask extra: "
                    "pip install \"deconv_ext[dask]\") is solved chunk by chunk into a new "
                    ".zarr. Tiled results are border-correct: the image is extended by "
                    "--boundary as far as the inverse filter reaches.")
    deblur.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files or folders")
    deblur.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="output folder (created if missing), or a file name when there "
                             "is exactly one input file")
    _add_solver_options(deblur)
    deblur.add_argument("--format", default=None, metavar="EXT",
                        help="output file type for folder outputs, e.g. png, tif, npy "
                             "(default: the input's)")
    deblur.add_argument("--suffix", default="", help="added to each output's file stem")
    deblur.add_argument("--out-dtype",
                        choices=("keep", "uint8", "uint16", "float16", "float32", "float64"),
                        default="keep", help="pixel type of the outputs (integers hold [0, 1] "
                                             "scaled to their maximum, clipped)")
    deblur.add_argument("--tile", metavar="TH[,TW]", default=None,
                        help="solve tile by tile, each solve writing a TH x TW interior (peak "
                             "memory follows the tile, not the image); for .zarr inputs, the "
                             "chunks to compute on (default: untiled; .zarr: the array's chunks)")
    deblur.add_argument("--overlap", metavar="auto|N[,M]", default=None,
                        help="pixels of neighbouring image solved with each tile, per side; "
                             "'auto' (the default with --tile) takes the inverse filter's reach, "
                             "beyond which it carries less than 1e-6 of its weight")
    deblur.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help="refuse images declaring more than N pixels (height x width) before "
                             "decoding them into memory (0: no limit); memory-mapped --tile "
                             "inputs are not limited")
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


def _input_job(path: str) -> Job:
    """A job for one named input; a link that leads nowhere or a non-file is its problem."""
    problem = path_problem(path, folder_ok=is_zarr_path(path))
    if problem == "no such file":
        problem = "no such file or folder"
    return Job(path, problem=f"{path}: {problem}" if problem else None)


def _expand_inputs(paths: Sequence[str]) -> List[Job]:
    jobs: List[Job] = []
    for p in paths:
        if os.path.isdir(p) and not is_zarr_path(p):
            # Every image-named entry, broken or looping links included: a
            # link that leads nowhere is reported, not skipped in silence.
            names = sorted(n for n in os.listdir(p)
                           if not n.startswith(".") and (is_image_path(n) or is_zarr_path(n))
                           and not (is_image_path(n) and os.path.isdir(os.path.join(p, n))))
            if not names:
                jobs.append(Job(p, problem=f"{p}: no image files in this folder"))
            jobs.extend(_input_job(os.path.join(p, n)) for n in names)
        else:
            jobs.append(_input_job(p))
    return jobs


def _probe_writable(folder: str) -> None:
    # The nearest existing ancestor says why a folder cannot be made there
    # ("-o /dev/null/x.png": /dev/null is a file), where makedirs says only
    # "File exists" or "Not a directory".
    up = os.path.abspath(folder)
    while not os.path.exists(up) and os.path.dirname(up) != up:
        up = os.path.dirname(up)
    if os.path.exists(up) and not os.path.isdir(up):
        why = ("it exists and is not a folder" if up == os.path.abspath(folder)
               else f"{up!r} is not a folder")
        raise UsageError(f"cannot write to output folder {folder!r}: {why}")
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
        if fmt not in EXTENSIONS + (ZARR_EXTENSION,):
            raise UsageError(f"--format {fmt[1:]!r} is not supported; expected one of "
                             f"{', '.join(e[1:] for e in EXTENSIONS + (ZARR_EXTENSION,))}")
    # A .zarr output is a folder that is one image: never a folder of outputs.
    names_one = is_zarr_path(output) or (is_image_path(output) and not os.path.isdir(output))
    single_file = len(jobs) == 1 and jobs[0].problem is None and names_one
    if single_file:
        _probe_writable(os.path.dirname(os.path.abspath(output)))
        dsts = [output]
    else:
        if names_one:
            raise UsageError(f"-o {output!r} names a file but there are {len(jobs)} inputs; give "
                             f"a folder")
        _probe_writable(output)
        dsts = []
        for job in jobs:
            stem, ext = os.path.splitext(os.path.basename(job.src.rstrip(os.sep)))
            dsts.append(os.path.join(output, stem + suffix + (fmt or ext)))
    seen = {}
    for job, dst in zip(jobs, dsts):
        if job.problem:
            continue
        if is_zarr_path(job.src) != is_zarr_path(dst):
            job.problem = (f"{job.src}: a Zarr array is written as Zarr and an image file as an "
                           f"image file; cannot write {dst}")
        elif is_zarr_path(job.src) and zarr_problem():
            job.problem = f"{job.src}: {zarr_problem()}"
        elif _same_file(job.src, dst):
            job.problem = (f"{job.src}: the output would overwrite the input; choose another -o "
                           f"or a --suffix")
        elif os.path.realpath(dst) in seen:
            job.problem = (f"{job.src}: its output {dst} is also the output of "
                           f"{seen[os.path.realpath(dst)]}; use --suffix or separate runs")
        else:
            seen[os.path.realpath(dst)] = job.src
            job.dst = dst


def deblur_file(src: str, dst: str, psf, device, out_dtype: str, solve_kwargs: dict,
                max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> Optional[str]:
    """Read ``src``, deconvolve every colour plane, write ``dst`` atomically.

    Images with NaN or infinite pixels are refused, and so is a result that
    has any (nothing is written). With ``eps`` a rule, returns what it chose
    (:func:`~deconv_ext.app.options.format_eps`: one eps per colour plane),
    else None.

    Raises ImageError / ValueError with a one-line message on failure.
    """
    arr = read_image(src, max_pixels)
    check_psf_fits(src, psf, arr.shape[:2])
    check_finite_input(src, arr)
    planes, alpha = to_unit_float(arr)
    y = torch.from_numpy(planes).to(device)
    rule = isinstance(solve_kwargs.get("eps"), str)
    out = deconvolve(y, psf.to(device=device, dtype=y.dtype), return_info=rule, **solve_kwargs)
    x, info = out if rule else (out, None)
    x = x.cpu().numpy()
    bad = count_nonfinite(x)
    if bad:
        raise nonfinite_result(src, bad, x.size)
    dtype = arr.dtype if out_dtype == "keep" else np.dtype(out_dtype)
    write_image(dst, from_unit_float(x, dtype, alpha))
    return format_eps(info.rule, info.eps) if rule else None


@dataclass
class Tiling:
    """How the tiled jobs of a run are solved (``--tile``, ``--overlap``, .zarr inputs)."""

    tile: Optional[tuple]
    overlap: object
    boundary: str
    any_tiled: bool
    any_untiled: bool


def _tiling(args, jobs: List[Job]) -> Tiling:
    """Parse and cross-check the tiling options; resolves ``args.boundary`` for untiled jobs."""
    if args.max_pixels < 0:
        raise UsageError(f"--max-pixels {args.max_pixels}: expected a number of pixels >= 0 "
                         f"(0: no limit)")
    tile = parse_tile(args.tile) if args.tile is not None else None
    overlap = parse_overlap(args.overlap)
    zarr_jobs = [is_zarr_path(j.src) for j in jobs if j.problem is None]
    any_tiled = tile is not None or any(zarr_jobs)
    any_untiled = tile is None and not all(zarr_jobs)
    if args.overlap is not None and not any_tiled:
        raise UsageError(f"--overlap {args.overlap} applies to tiled solves only (--tile, or a "
                         f".zarr input)")
    if any_tiled:
        what = "--tile" if tile is not None else "a .zarr input"
        if isinstance(args.eps, str):
            # A rule's sums run over the whole spectrum of one image, which a
            # tiled solve never holds; a tile's own choice would differ from
            # its neighbours' and print seams.
            raise UsageError(f"--eps {args.eps} needs the whole image; pass a number with "
                             f"{what} (e.g. the eps that --eps {args.eps} prints for an "
                             f"untiled crop of the image)")
        if args.boundary == "circular":
            raise UsageError(f"--boundary circular has no meaning with {what}: a tile has no "
                             f"periodic neighbour; expected reflect, symmetric, replicate or "
                             f"zeros (the default with tiles: reflect)")
        if args.solver not in (None, "fft"):
            raise UsageError(f"--solver {args.solver} cannot be used with {what}: tiles are "
                             f"solved by the FFT solve (--solver fft)")
    tiled_boundary = args.boundary or "reflect"
    args.boundary = args.boundary or "circular"
    return Tiling(tile, overlap, tiled_boundary, any_tiled, any_untiled)


def _run_job(job: Job, psf, device, args, solve: dict, tiling: Tiling,
             progress: bool) -> Optional[str]:
    """Restore one input the way its kind asks: in memory, tile by tile, or Zarr via Dask.

    Returns the eps a rule chose (in memory only), else None."""
    if is_zarr_path(job.src) or tiling.tile is not None:
        kwargs = tiled_solve(solve, tiling.boundary)
        if is_zarr_path(job.src):
            deblur_zarr(job.src, job.dst, psf.cpu(), args.out_dtype, kwargs, tiling.tile,
                        tiling.overlap, progress)
        else:
            deblur_tiled(job.src, job.dst, psf.to(device), args.out_dtype, kwargs, tiling.tile,
                         tiling.overlap, args.max_pixels or None, progress)
    else:
        return deblur_file(job.src, job.dst, psf, device, args.out_dtype, solve,
                           args.max_pixels or None)
    return None


def cmd_deblur(args) -> int:
    """``deconv-ext deblur``: returns the exit status."""
    require_optional("deblur", NEEDS["deblur"])
    from tqdm import tqdm  # optional (the cli extra), checked above

    device = resolve_device(args.device)
    try:
        psf = parse_spec(args.psf)
    except PSFSpecError as exc:
        raise UsageError(str(exc)) from None
    args.eps = parse_eps(args.eps)
    args.noise_std = parse_noise_std(args.noise_std)
    reason = rule_problem(args.eps, args.method, args.solver, args.noise_std)
    if reason:
        raise UsageError(f"--eps {args.eps}: {reason}")
    jobs = _expand_inputs(args.inputs)
    tiling = _tiling(args, jobs)
    reason = boundary_problem(args.boundary, args.solver, psf) if tiling.any_untiled else None
    if reason:
        what = f"--boundary {args.boundary}" + (f" --solver {args.solver}" if args.solver else "")
        raise UsageError(f"{what} --psf {args.psf}: {reason}")
    solve = dict(eps=args.eps, method=args.method, reg=None if args.reg == "none" else args.reg,
                 rcond=args.rcond, **solver_kwargs(args.boundary, args.solver))
    if args.noise_std is not None:
        solve["noise_std"] = args.noise_std
    if tiling.any_tiled:
        reason = tiled_problem(psf, tiled_solve(solve, tiling.boundary), tiling.tile,
                               tiling.overlap)
        if reason:
            what = " ".join(f"{k} {v}" for k, v in (("--tile", args.tile),
                                                     ("--overlap", args.overlap),
                                                     ("--boundary", tiling.boundary),
                                                     ("--psf", args.psf)) if v is not None)
            if "overlap=" in reason:
                reason += " (here: --overlap N or NH,NW)"
            raise UsageError(f"{what}: {reason}")
    plan_outputs(jobs, args.output, args.format, args.suffix)

    failures = []
    bar = tqdm(jobs, desc="deblur", unit="img", file=sys.stderr, dynamic_ncols=True,
               disable=None if args.progress is None else not args.progress)
    for job in bar:
        problem = job.problem
        chosen = None
        if problem is None:
            try:
                chosen = _run_job(job, psf, device, args, solve, tiling,
                                  progress=not bar.disable)
            except (ImageError, ValueError, TypeError, NotImplementedError, OSError,
                    RuntimeError, MemoryError) as exc:
                # One bad image must not stop the batch; the library's and the
                # readers' messages already name what was wrong.
                msg = " ".join(str(exc).split()) or type(exc).__name__
                if isinstance(exc, MemoryError) and tiling.tile is None:
                    msg += "; --tile TH,TW solves it in pieces"
                problem = msg if msg.startswith(job.src) else f"{job.src}: {msg}"
        if problem:
            failures.append(job.src)
            error(problem, write=lambda s: tqdm.write(s, file=sys.stderr))
        elif not args.quiet:
            tqdm.write(f"{job.src} -> {job.dst}" + (f"  {chosen}" if chosen else ""),
                       file=sys.stdout)
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
    run_demo(image=args.image, psf=psf, psf_name=args.psf, noise=args.noise,
             eps=parse_eps(args.eps),
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
    """Run the command line; returns the exit status (0 ok, 2 failure, 128 + N on signal N).

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
        with terminate_cleanly():
            return COMMANDS[args.command](args)
    except UsageError as exc:
        error(str(exc))
        return EXIT_FAIL
    except KeyboardInterrupt:
        error("interrupted; partial outputs removed")
        return 130
    except Terminated as exc:
        error(f"terminated by {exc.name}; partial outputs removed")
        return exc.exit_status
    except BrokenPipeError:
        # The reader went away (``deconv-ext info | head``): no traceback; and
        # point stdout at /dev/null so that the interpreter's final flush
        # does not raise again. 128 + SIGPIPE, as a shell reports it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
