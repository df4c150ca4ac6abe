"""The command line end to end: deblur round trips, demo, bad input, --help.

Commands run in-process through ``deconv_ext.app.cli.main(argv)`` (fast), plus
one real ``python -m deconv_ext --help`` subprocess for the entry point.

The round-trip scene is a smooth synthetic image (sinusoid plus Gaussian
blobs, seeded), blurred circularly by a known Gaussian PSF and quantised to
the file's bit depth. At eps=1e-3 the blurred image scores 35.1 dB; the
restorations measured 39.4 dB (8-bit), 41.9 dB (16-bit) and higher for float,
so the stated bound is 38 dB, and at least 3 dB better than the blurred input.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import deconv_ext as dx
from deconv_ext.app import bench, cli
from deconv_ext.app.image_io import read_image

PSNR_BOUND = 38.0
SIGMA = 1.5
TESTS = os.path.dirname(os.path.abspath(__file__))


def _scene(h=96, w=80, seed=7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 0.3 + 0.15 * np.sin(2 * np.pi * xx / 37) * np.cos(2 * np.pi * yy / 29)
    for _ in range(25):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        s, a = rng.uniform(1.5, 4), rng.uniform(-0.25, 0.35)
        img += a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    return np.clip(img, 0.02, 0.98)


def _blur(img: np.ndarray) -> np.ndarray:
    psf = dx.gaussian(SIGMA, dtype=torch.float64)
    t = torch.from_numpy(img if img.ndim == 2 else np.moveaxis(img, -1, 0).copy())
    b = dx.convolve(t, psf).numpy()
    return b if img.ndim == 2 else np.moveaxis(b, 0, -1)


def _quantise(x: np.ndarray, dtype) -> np.ndarray:
    top = np.iinfo(dtype).max
    return np.clip(np.round(x * top), 0, top).astype(dtype)


def _psnr(x: np.ndarray, truth: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((x.astype(np.float64) - truth) ** 2)))


def _unit(arr: np.ndarray) -> np.ndarray:
    return arr / np.iinfo(arr.dtype).max if arr.dtype.kind == "u" else arr.astype(np.float64)


def _run(argv, capsys):
    """main(argv) -> (exit status, stdout, stderr lines)."""
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, [line for line in err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def sharp():
    return _scene()


def _write(path, arr):
    if path.suffix == ".npy":
        np.save(path, arr)
    elif path.suffix == ".tif":
        tifffile.imwrite(path, arr)
    else:
        Image.fromarray(arr).save(path)


CASES = [  # (file name, stored dtype, colour)
    ("gray8.png", np.uint8, False),
    ("gray16.png", np.uint16, False),
    ("gray16.tif", np.uint16, False),
    ("gray8.tif", np.uint8, False),
    ("grayf.npy", np.float32, False),
    ("rgb8.png", np.uint8, True),
    ("rgb16.tif", np.uint16, True),
]


@pytest.mark.parametrize("name,dtype,colour", CASES, ids=[c[0] for c in CASES])
def test_deblur_round_trip_keeps_bit_depth(tmp_path, capsys, sharp, name, dtype, colour):
    truth = np.stack([sharp, sharp[::-1], sharp[:, ::-1]], axis=-1) if colour else sharp
    blurred = _blur(truth)
    stored = blurred.astype(dtype) if dtype == np.float32 else _quantise(blurred, dtype)
    src = tmp_path / name
    _write(src, stored)
    before = src.read_bytes()
    rc, out, err = _run(["deblur", src, "-o", tmp_path / "out", "--psf", f"gaussian:{SIGMA}",
                         "--eps", "1e-3", "--no-progress"], capsys)
    assert rc == 0 and err == []
    result = read_image(str(tmp_path / "out" / name))
    assert result.dtype == dtype and result.shape == stored.shape
    blurred_psnr, restored_psnr = _psnr(_unit(stored), truth), _psnr(_unit(result), truth)
    assert restored_psnr > PSNR_BOUND, (blurred_psnr, restored_psnr)
    assert restored_psnr > blurred_psnr + 3.0
    assert src.read_bytes() == before


def test_single_file_output_name_and_out_dtype(tmp_path, capsys, sharp):
    src = tmp_path / "in.npy"
    np.save(src, _blur(sharp).astype(np.float32))
    dst = tmp_path / "restored.png"
    rc, _, err = _run(["deblur", src, "-o", dst, "--psf", f"gaussian:{SIGMA}", "--eps", "1e-3",
                       "--out-dtype", "uint16"], capsys)
    assert rc == 0 and err == []
    result = np.array(Image.open(dst))
    assert result.dtype == np.uint16 and _psnr(_unit(result), sharp) > PSNR_BOUND


def test_folder_input_with_bad_files_still_processes_the_good_one(tmp_path, capsys, sharp):
    folder = tmp_path / "in"
    folder.mkdir()
    good = _quantise(_blur(sharp), np.uint8)
    Image.fromarray(good).save(folder / "a_good.png")
    png = (folder / "a_good.png").read_bytes()
    (folder / "b_truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "c_random.png").write_bytes(np.random.default_rng(3).bytes(2000))
    out = tmp_path / "out"
    rc, _, err = _run(["deblur", folder, "-o", out, "--psf", f"gaussian:{SIGMA}", "--eps", "1e-3",
                       "--no-progress"], capsys)
    assert rc == 2
    assert len(err) == 3  # one line per bad file + the summary
    assert "b_truncated.png" in err[0] and "c_random.png" in err[1]
    assert "2 of 3 inputs failed" in err[2]
    assert sorted(os.listdir(out)) == ["a_good.png"]  # no partial or temporary files
    assert _psnr(_unit(read_image(str(out / "a_good.png"))), sharp) > PSNR_BOUND


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"not an image at all"],
                         ids=["truncated-header", "text"])
def test_single_bad_file_is_one_line_and_no_output(tmp_path, capsys, content):
    src = tmp_path / "bad.png"
    src.write_bytes(content)
    out = tmp_path / "out"
    rc, stdout, err = _run(["deblur", src, "-o", out, "--psf", "box:3"], capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("deconv-ext: error: ")
    assert "bad.png" in err[0]
    assert os.listdir(out) == []


@pytest.mark.parametrize("spec", ["foo:1", "gaussian:", "gaussian:-1", "gaussian:1,2,3",
                                  "box:2.5", "box:0", "motion:abc,3", "disk:nan", "missing.npy",
                                  "gaussian", "box:nan", "box:inf", "gaussian:1e308",
                                  "gaussian:2,1e400", "box:1e12", "motion:1e9,0", "disk:1e6",
                                  "gaussian:20000"])
def test_bad_psf_spec(tmp_path, capsys, sharp, spec):
    src = tmp_path / "in.png"
    Image.fromarray(_quantise(sharp, np.uint8)).save(src)
    rc, _, err = _run(["deblur", src, "-o", tmp_path / "out", "--psf", spec], capsys)
    assert rc == 2 and len(err) == 1
    assert spec in err[0]
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_psf_file_npy_and_image(tmp_path, capsys, sharp):
    blurred = _quantise(_blur(sharp), np.uint16)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, blurred)
    k = dx.gaussian(SIGMA).numpy()
    np.save(tmp_path / "psf.npy", k * 7.0)  # any positive scale: normalised on load
    Image.fromarray(_quantise(k / k.max(), np.uint16)).save(tmp_path / "psf.png")
    for psf in ("psf.npy", "psf.png"):
        rc, _, err = _run(["deblur", src, "-o", tmp_path / f"out_{psf}.tif",
                           "--psf", tmp_path / psf, "--eps", "1e-3"], capsys)
        assert rc == 0 and err == []
        assert _psnr(_unit(tifffile.imread(tmp_path / f"out_{psf}.tif")), sharp) > PSNR_BOUND


def test_psf_larger_than_one_image(tmp_path, capsys, sharp):
    Image.fromarray(_quantise(sharp[:20, :20], np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(_quantise(sharp, np.uint8)).save(tmp_path / "large.png")
    out = tmp_path / "out"
    rc, _, err = _run(["deblur", tmp_path / "small.png", tmp_path / "large.png", "-o", out,
                       "--psf", "box:31", "--no-progress"], capsys)
    assert rc == 2 and len(err) == 2
    assert "small.png" in err[0] and "larger than the image" in err[0]
    assert os.listdir(out) == ["large.png"]


def test_unwritable_output_folder(tmp_path, capsys, sharp):
    src = tmp_path / "in.png"
    Image.fromarray(_quantise(sharp, np.uint8)).save(src)
    blocker = tmp_path / "a_file"
    blocker.write_text("a regular file cannot hold a folder")
    rc, _, err = _run(["deblur", src, "-o", blocker / "out", "--psf", "box:3"], capsys)
    assert rc == 2 and len(err) == 1 and "cannot write to output folder" in err[0]
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            rc, _, err = _run(["deblur", src, "-o", ro, "--psf", "box:3"], capsys)
            assert rc == 2 and len(err) == 1 and os.listdir(ro) == []
        finally:
            ro.chmod(0o700)


def test_input_is_never_overwritten(tmp_path, capsys, sharp):
    src = tmp_path / "in.png"
    Image.fromarray(_quantise(_blur(sharp), np.uint8)).save(src)
    before = src.read_bytes()
    for out in (src, tmp_path):  # the file itself, and its own folder
        rc, _, err = _run(["deblur", src, "-o", out, "--psf", "box:3"], capsys)
        assert rc == 2 and len(err) == 1 and "overwrite the input" in err[0]
        assert src.read_bytes() == before
    rc, _, err = _run(["deblur", src, "-o", tmp_path, "--suffix", "_deblurred", "--psf", "box:3"],
                      capsys)
    assert rc == 0 and (tmp_path / "in_deblurred.png").exists() and src.read_bytes() == before


def test_format_that_cannot_hold_the_pixels_leaves_nothing(tmp_path, capsys, sharp):
    src = tmp_path / "in.npy"
    np.save(src, _blur(sharp).astype(np.float32))
    out = tmp_path / "out"
    rc, _, err = _run(["deblur", src, "-o", out, "--format", "png", "--psf", "box:3"], capsys)
    assert rc == 2 and len(err) == 1 and "--out-dtype" in err[0]
    assert os.listdir(out) == []


def test_boundary_choices_follow_the_library(capsys):
    from deconv_ext import validation as _validate

    with pytest.raises(SystemExit) as exc:
        cli.main(["deblur", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for b in _validate.BOUNDARIES:
        assert b in text


def test_refused_solver_combination_is_one_line_for_the_batch(tmp_path, capsys, sharp):
    # The DCT solve needs a PSF symmetric in each axis; a motion blur at 30
    # degrees is not: one message for the whole batch, nothing written.
    for name in ("a.png", "b.png"):
        Image.fromarray(_quantise(sharp, np.uint8)).save(tmp_path / name)
    out = tmp_path / "out"
    rc, _, err = _run(["deblur", tmp_path / "a.png", tmp_path / "b.png", "-o", out,
                       "--psf", "motion:7,30", "--boundary", "symmetric", "--solver", "dct",
                       "--no-progress"], capsys)
    assert rc == 2 and len(err) == 1
    assert "--solver dct" in err[0] and "motion:7,30" in err[0]
    assert not out.exists()


def test_demo_writes_its_figure(tmp_path, capsys):
    # A small image file keeps the test quick; the built-in image is 512x512.
    src = tmp_path / "scene.png"
    Image.fromarray(_quantise(_scene(128, 112), np.uint8)).save(src)
    fig = tmp_path / "figs" / "demo.png"
    rc, out, err = _run(["demo", "--image", src, "--out", fig, "--psf", "gaussian:1.5",
                         "--edges", "periodic"], capsys)
    assert rc == 0
    assert "PSNR" in out and str(fig) in out
    rows = {line.split("  ")[0].strip(): line for line in out.splitlines()}
    blurred = float(rows["blurred + noise"].split()[3])
    laplacian = float(rows["laplacian"].split()[1])
    assert laplacian > blurred + 1.0
    with Image.open(fig) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 100


def test_bench_builtin_table(capsys, monkeypatch):
    monkeypatch.setattr(bench, "QUICK_SHAPES", [(2, 1, 64, 48)])
    rc, out, err = _run(["bench", "--builtin", "--quick"], capsys)
    assert rc == 0 and "2x1x64" in out
    ratios = [float(v) for v in out.splitlines()[-1].split()[-2:]]
    assert all(r > 0 for r in ratios)


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["deblur", "--help"],
                                  ["bench", "--help"]])
def test_help(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: deconv-ext") and len(text.splitlines()) > 5


def test_module_entry_point_subprocess():
    # cwd: the tests folder, so the deconv_ext found is the one installed (or on PYTHONPATH)
    proc = subprocess.run([sys.executable, "-m", "deconv_ext", "--help"], cwd=TESTS,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "deblur" in proc.stdout and "demo" in proc.stdout and "bench" in proc.stdout


def test_bench_runs_the_cpu_script_without_touching_results(monkeypatch):
    """`deconv-ext bench` prints only: the script gets --no-append (and --quick)."""
    if bench.find_script("cpu") is None:
        pytest.skip("not a source checkout: no benchmarks/bench_cpu.py next to the package")
    calls = []
    monkeypatch.setattr(bench.subprocess, "call", lambda argv: calls.append(argv) or 0)
    assert bench.run_bench("cpu", quick=True) == 0
    (argv,) = calls
    assert argv[1].endswith("bench_cpu.py")
    assert "--no-append" in argv and "--quick" in argv


class _Parsed(Exception):
    """Raised instead of running a benchmark, once its command line has parsed."""


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("quick", [False, True])
def test_bench_flags_are_accepted_by_the_scripts(monkeypatch, device, quick):
    """The flags `bench` passes parse with each script's own parser (nothing is run)."""
    import argparse
    import importlib.util

    script = bench.find_script(device)
    if script is None:
        pytest.skip("not a source checkout: no benchmarks/ next to the package")
    argv = bench.script_argv(device, script, quick)
    assert argv[:2] == [sys.executable, script]
    spec = importlib.util.spec_from_file_location(f"_bench_script_{device}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(_Parsed) as parsed:
        module.main(argv[2:])
    ns = vars(parsed.value.args[0])
    if device == "cpu":
        assert ns["no_append"] is True and ns["quick"] is quick
    else:
        assert ns["reps"] == (5 if quick else None)


# Run the command line with the cli extra's packages made unimportable: a
# meta-path finder at the front of sys.meta_path refuses them (and their
# submodules), as if only the core were installed.
BLOCKED_RUN = """
import sys
BLOCKED = {"PIL", "tifffile", "tqdm", "skimage", "matplotlib"}

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, Block())
from deconv_ext.app.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("argv,names", [
    (["deblur", "in.png", "-o", "out"], ("pillow", "tifffile", "tqdm")),
    (["demo"], ("scikit-image", "matplotlib")),
], ids=["deblur", "demo"])
def test_missing_cli_extra_is_one_line_naming_the_extra(tmp_path, argv, names):
    proc = subprocess.run([sys.executable, "-c", BLOCKED_RUN, *argv], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr  # no traceback
    assert lines[0].startswith("deconv-ext: error: ")
    assert 'pip install "deconv_ext[cli]"' in lines[0]
    assert all(n in lines[0] for n in names)
    assert os.listdir(tmp_path) == []  # nothing written


def test_info_runs_without_the_cli_extra(tmp_path):
    """The core's own commands need none of the optional packages."""
    proc = subprocess.run([sys.executable, "-c", BLOCKED_RUN, "info", "--json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import json

    info = json.loads(proc.stdout)
    assert info["deconv_ext"]["version"] == dx.__version__
    assert info["torch"]["version"] == torch.__version__


def test_info_describes_this_installation(capsys):
    from deconv_ext import config, execution
    from deconv_ext.execution import fft_choice
    from deconv_ext.app.info import describe

    info = describe()
    assert info["extension"]["loaded"] == execution.available()
    if execution.available():
        assert info["extension"]["cpu_fft"] in ("MKL DFTI, called directly", "torch.fft")
        assert os.path.samefile(info["extension"]["path"], execution.library.extension_path())
    assert info["fft"]["cache"] == fft_choice.cache_path()
    assert info["fft"]["cpu_library"] == config.get().cpu_fft
    assert info["cuda"]["available"] == torch.cuda.is_available()
    assert len(info["cuda"]["devices"]) == (torch.cuda.device_count()
                                             if torch.cuda.is_available() else 0)
    assert info["triton_kernels"]["usable"] == (info["triton"]["version"] is not None
                                                and torch.cuda.is_available())
    rc, out, err = _run(["info"], capsys)
    assert rc == 0 and err == []
    assert f"torch        {torch.__version__}" in out and info["fft"]["cache"] in out
    rc, out, _ = _run(["info", "--json"], capsys)
    import json

    assert json.loads(out) == json.loads(json.dumps(info))


def test_python_m_info(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "deconv_ext", "info"], cwd=TESTS,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "deconv_ext   " + dx.__version__ in proc.stdout and "FFT cache" in proc.stdout
