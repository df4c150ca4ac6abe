"""Tiled deconvolution (deconv_ext.tiling, deconv_ext.dask): seams, memory, speed.

Sections (each can be skipped):

seams
    Tiled (``overlap="auto"``, default tol, float32) against the border-correct
    untiled solve (the whole image extended by the rule by more than the
    overlap, solved circularly in float64, cropped); Gaussian sigma=3 and a
    15 px motion blur, horizontal and at 30 degrees (an overlap of up to
    ~2500 px at eps=1e-4), eps 1e-4 .. 1e-1, tiles 512^2 and 383x461.
    Reported: the largest difference anywhere (border included) relative to
    the result's max |x|; the float32 untiled solve's difference to the same
    float64 reference (the rounding floor); the seam bound of TiledInfo.
    Target: <= 1e-4.
memory
    A 16384^2 float32 image from a memory-mapped .npy file into another one
    (tile :data:`~deconv_ext.tiling.DEFAULT_TILE`), in a fresh subprocess
    that samples ``RssAnon`` of /proc/self/status every 5 ms in a thread
    (anonymous memory: what the solve allocates; the file-backed pages of the
    two maps are ``RssFile`` and are the kernel's to evict) and also reads
    ``VmHWM`` after ``clear_refs`` (peak of all resident pages, mapped
    included). Target: peak RssAnon <= 0.5 GiB above its value before the solve.
speed
    8192^2 float32, Gaussian sigma=3, eps=1e-2, reflect: tiled solves of
    several tile sizes against the untiled padded solve (``deconvolve(...,
    boundary="reflect")`` one-shot, and a prebuilt plan), side by side
    (benchmarks/_timing.py). Target: tiled throughput >= 0.8x the untiled.
dask
    The same image on a 2-worker LocalCluster (processes, 1 thread each),
    2048^2 chunks, input persisted on the workers first; the result persisted
    on the workers (the target) and, separately, gathered back as numpy,
    against the in-process tiled solve with 2048^2 tiles (2 torch threads).
    Target: within 1.5x.

Usage::

    .venv/bin/python benchmarks/bench_tiles.py [--skip seams,memory,speed,dask]
        [--append-results]

Writes ``benchmarks/out/tiles.json`` and prints Markdown tables.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("DECONV_EXT_CPU_FFT", "pipeline")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import _report  # noqa: E402
from _timing import machine_line, markdown_table, median_times, today  # noqa: E402

import deconv_ext as dx  # noqa: E402
from deconv_ext.tiling import DEFAULT_TILE, deconvolve_tiled, filter_reach  # noqa: E402

NP_MODE = {"reflect": "reflect", "symmetric": "symmetric", "replicate": "edge", "zeros": "edge"}


def border_correct(y: np.ndarray, psf: torch.Tensor, eps: float, boundary: str, pad,
                   dtype=torch.float64) -> np.ndarray:
    """Untiled reference: extend by ``pad`` per side (np.pad), circular plan, crop."""
    yp = np.pad(y, [(pad[0], pad[0]), (pad[1], pad[1])], mode=NP_MODE[boundary])
    t = torch.from_numpy(yp).to(dtype)
    plan = dx.DeconvPlan(psf.to(dtype), tuple(t.shape), eps=eps, dtype=dtype)
    x = plan(t).numpy()
    return x[pad[0]:pad[0] + y.shape[0], pad[1]:pad[1] + y.shape[1]]


def test_image(shape, psf, seed=0) -> np.ndarray:
    """A blurred piecewise-smooth image in [0, 1] (random blocks + a ramp), float32."""
    rng = np.random.default_rng(seed)
    H, W = shape
    blocks = rng.random((H // 32 + 1, W // 32 + 1))
    x = np.kron(blocks, np.ones((32, 32)))[:H, :W]
    x = 0.7 * x + 0.3 * np.linspace(0, 1, W)[None, :]
    return dx.convolve(torch.from_numpy(x), psf.double(), boundary="reflect").numpy().astype(
        np.float32)


# -- seams ----------------------------------------------------------------------

def run_seams(shape=(1024, 1280)):
    rows = []
    psfs = [("gaussian sigma=3", dx.gaussian(3.0)), ("motion 15 px", dx.motion(15)),
            ("motion 15 px 30 deg", dx.motion(15, 30.0))]
    for name, psf in psfs:
        y = test_image(shape, psf)
        for eps in (1e-4, 1e-3, 1e-2, 1e-1):
            r = filter_reach(psf, eps)
            pad = (r.rows + 64, r.cols + 64)
            ref = border_correct(y, psf, eps, "reflect", pad)
            x32 = border_correct(y, psf, eps, "reflect", pad, torch.float32)
            scale = float(np.abs(ref).max())
            floor = float(np.abs(x32 - ref).max()) / scale
            for tile in ((512, 512), (383, 461)):
                t0 = time.perf_counter()
                x, info = deconvolve_tiled(y, psf, eps, boundary="reflect", tile=tile,
                                           return_info=True)
                dt = time.perf_counter() - t0
                err = float(np.abs(x - ref).max()) / scale
                rows.append(dict(psf=name, eps=eps, tile=list(tile), overlap=list(info.overlap),
                                 fft_size=list(info.fft_size), n_tiles=info.n_tiles,
                                 err_rel=err, floor_rel=floor,
                                 bound_rel=info.seam_bound / scale, seconds=dt))
                print(f"seams {name:19} eps={eps:g} tile={tile} overlap={info.overlap} "
                      f"err={err:.2e} (float32 floor {floor:.2e}, bound {info.seam_bound / scale:.2e})"
                      f" {dt:.1f}s", flush=True)
    return rows


def seams_table(rows):
    head = ["PSF", "eps", "tile", "overlap (rows, cols)", "buffer", "tiled vs untiled / max|x|",
            "float32 untiled / max|x|", "seam bound / max|x|"]
    body = [[r["psf"], f"{r['eps']:g}", "x".join(map(str, r["tile"])),
             f"{r['overlap'][0]}, {r['overlap'][1]}", "x".join(map(str, r["fft_size"])),
             f"{r['err_rel']:.1e}", f"{r['floor_rel']:.1e}", f"{r['bound_rel']:.1e}"]
            for r in rows]
    worst = max(r["err_rel"] for r in rows)
    return (markdown_table(head, body) + f"\n\nworst tiled vs untiled: {worst:.1e} of max|x| "
            f"(target <= 1e-4: {'met' if worst <= 1e-4 else 'NOT met'})")


# -- memory ---------------------------------------------------------------------

MEM_CHILD = r"""
import json, os, sys, threading, time
import numpy as np
import torch
import deconv_ext as dx
from deconv_ext.tiling import deconvolve_tiled, DEFAULT_TILE

src, dst = sys.argv[1], sys.argv[2]

def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0]) * 1024
    return out

y = np.load(src, mmap_mode="r")
out = np.lib.format.open_memmap(dst, mode="r+")
psf = dx.gaussian(3.0)
# warm-up: lazy initialisation (ops, FFT plans, thread pools) not counted
deconvolve_tiled(np.ascontiguousarray(y[:1500, :1500]), psf, 1e-2)
peak = [0]
stop = threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], status()["RssAnon"])
        time.sleep(0.005)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status()
th = threading.Thread(target=sample, daemon=True); th.start()
t0 = time.perf_counter()
_, info = deconvolve_tiled(y, psf, 1e-2, tile=DEFAULT_TILE, out=out, return_info=True)
out.flush()
dt = time.perf_counter() - t0
stop.set(); th.join()
after = status()
print(json.dumps(dict(before=before, after=after, peak_anon=max(peak[0], after["RssAnon"]),
                      seconds=dt, tile=list(info.tile), overlap=list(info.overlap),
                      fft_size=list(info.fft_size), n_tiles=info.n_tiles,
                      finite=bool(np.isfinite(out[::512, ::512]).all()))))
"""


def run_memory(n=16384, workdir=None):
    workdir = workdir or tempfile.mkdtemp(prefix="bench_tiles_")
    src, dst = os.path.join(workdir, "y.npy"), os.path.join(workdir, "x.npy")
    try:
        y = np.lib.format.open_memmap(src, mode="w+", dtype=np.float32, shape=(n, n))
        rng = np.random.default_rng(0)
        for i in range(0, n, 1024):
            y[i:i + 1024] = rng.random((min(1024, n - i), n), dtype=np.float32)
        y.flush()
        del y
        o = np.lib.format.open_memmap(dst, mode="w+", dtype=np.float32, shape=(n, n))
        del o
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
        proc = subprocess.run([sys.executable, "-c", MEM_CHILD, src, dst], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        r = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        for p in (src, dst):
            if os.path.exists(p):
                os.remove(p)
        os.rmdir(workdir)
    gib = 2.0 ** 30
    r["image"] = [n, n]
    r["anon_extra_gib"] = (r["peak_anon"] - r["before"]["RssAnon"]) / gib
    print(f"memory {n}x{n} float32 memmap -> memmap: peak RssAnon {r['peak_anon'] / gib:.3f} GiB "
          f"(+{r['anon_extra_gib']:.3f} over before), VmHWM {r['after']['VmHWM'] / gib:.2f} GiB, "
          f"RssFile at end {r['after']['RssFile'] / gib:.2f} GiB, {r['seconds']:.1f} s", flush=True)
    return r


def memory_table(r):
    gib = 2.0 ** 30
    head = ["image", "tile", "overlap", "RssAnon before GiB", "peak RssAnon GiB",
            "extra anon GiB", "VmHWM GiB (incl. mapped)", "RssFile at end GiB", "seconds"]
    body = [["x".join(map(str, r["image"])) + " float32", "x".join(map(str, r["tile"])),
             "x".join(map(str, r["overlap"])), f"{r['before']['RssAnon'] / gib:.3f}",
             f"{r['peak_anon'] / gib:.3f}", f"{r['anon_extra_gib']:.3f}",
             f"{r['after']['VmHWM'] / gib:.2f}", f"{r['after']['RssFile'] / gib:.2f}",
             f"{r['seconds']:.1f}"]]
    ok = r["anon_extra_gib"] <= 0.5
    return markdown_table(head, body) + (f"\n\nextra anonymous memory {r['anon_extra_gib']:.3f} "
                                         f"GiB (target <= 0.5 GiB: {'met' if ok else 'NOT met'})")


# -- speed ----------------------------------------------------------------------

def run_speed(n=8192, tiles=(512, 1024, 2048, 4096), rounds=7):
    psf, eps = dx.gaussian(3.0), 1e-2
    y = torch.from_numpy(test_image((n, n), psf))
    plan = dx.DeconvPlan(psf, (n, n), eps=eps, boundary="reflect")
    fns = {"untiled deconvolve": lambda: dx.deconvolve(y, psf, eps, boundary="reflect"),
           "untiled prebuilt plan": lambda: plan(y)}
    out = torch.empty_like(y)
    for t in tiles:
        fns[f"tiled {t}"] = (lambda t=t: deconvolve_tiled(y, psf, eps, boundary="reflect",
                                                          tile=(t, t), out=out))
    times = median_times(fns, rounds=rounds, warmup=1)
    base = times["untiled deconvolve"]
    rows = []
    for name, s in times.items():
        rows.append(dict(method=name, seconds=s, mpix_s=n * n / s / 1e6,
                         throughput_vs_untiled=base / s))
        print(f"speed {name:22} {s:7.2f} s  {n * n / s / 1e6:6.1f} Mpx/s  "
              f"{base / s:.2f}x untiled", flush=True)
    return dict(image=[n, n], overlap=list(filter_reach(psf, eps).margin), rows=rows)


def speed_table(r):
    head = ["method", "median s", "Mpx/s", "throughput / untiled deconvolve"]
    body = [[x["method"], f"{x['seconds']:.2f}", f"{x['mpix_s']:.1f}",
             f"{x['throughput_vs_untiled']:.2f}"] for x in r["rows"]]
    return (f"{r['image'][0]}^2 float32, Gaussian sigma=3, eps=1e-2, reflect, auto overlap "
            f"{r['overlap'][0]} px\n\n" + markdown_table(head, body))


# -- dask -----------------------------------------------------------------------

def run_dask(n=8192, chunk=2048, rounds=3):
    import dask.array as da
    import distributed

    import deconv_ext.dask as ddx

    psf, eps = dx.gaussian(3.0), 1e-2
    y = test_image((n, n), psf)
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                       host="127.0.0.1", dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        d = client.persist(da.from_array(y, chunks=(chunk, chunk)))
        distributed.wait(d)
        lazy = ddx.deconvolve(d, psf, eps, boundary="reflect")
        out = np.empty_like(y)
        fns = {"dask 2 workers (gathered)": lambda: client.compute(lazy).result(),
               "dask 2 workers (persisted)": lambda: distributed.wait(client.persist(lazy)),
               f"in-process tiled {chunk}": lambda: deconvolve_tiled(
                   y, psf, eps, boundary="reflect", tile=(chunk, chunk), out=out)}
        times = median_times(fns, rounds=rounds, warmup=1)
        x = client.compute(lazy).result()
        diff = float(np.abs(x - out).max() / np.abs(out).max())
    finally:
        client.close()
        cluster.close()
    base = times[f"in-process tiled {chunk}"]
    rows = [dict(method=k, seconds=v, vs_in_process=v / base) for k, v in times.items()]
    for r in rows:
        print(f"dask {r['method']:28} {r['seconds']:6.2f} s  {r['vs_in_process']:.2f}x "
              f"in-process", flush=True)
    print(f"dask vs in-process max diff {diff:.1e} of max|x|")
    return dict(image=[n, n], chunk=chunk, rows=rows, max_diff_rel=diff)


def dask_table(r):
    head = ["method", "median s", "time / in-process tiled"]
    body = [[x["method"], f"{x['seconds']:.2f}", f"{x['vs_in_process']:.2f}"] for x in r["rows"]]
    ratio = {("gathered" if "gathered" in x["method"] else "persisted"): x["vs_in_process"]
             for x in r["rows"] if "dask" in x["method"]}
    return (f"{r['image'][0]}^2 float32, {r['chunk']}^2 chunks, LocalCluster(n_workers=2, "
            f"processes=True, threads_per_worker=1); largest difference to the in-process "
            f"result {r['max_diff_rel']:.1e} of max|x|\n\n" + markdown_table(head, body)
            + f"\n\npersisted (result kept on the workers) / in-process: "
              f"{ratio['persisted']:.2f}x (target <= 1.5x: "
              f"{'met' if ratio['persisted'] <= 1.5 else 'NOT met'}); gathered adds the transfer "
              f"of the 256 MiB result to the client: {ratio['gathered']:.2f}x")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip", default="", help="comma-separated: seams,memory,speed,dask")
    ap.add_argument("--append-results", action="store_true",
                    help="append a dated section to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    result, parts = dict(date=today(), machine=machine_line()), []
    print(machine_line(), flush=True)
    if "seams" not in skip:
        result["seams"] = run_seams()
        parts.append("Seams (1024x1280 float32 image, reflect, overlap='auto', default tol):\n\n"
                     + seams_table(result["seams"]))
    if "memory" not in skip:
        result["memory"] = run_memory()
        parts.append("Memory (fresh subprocess, RssAnon sampled every 5 ms, VmHWM after "
                     "clear_refs):\n\n" + memory_table(result["memory"]))
    if "speed" not in skip:
        result["speed"] = run_speed()
        parts.append("Speed (median of 7 side-by-side rounds):\n\n" + speed_table(result["speed"]))
    if "dask" not in skip:
        result["dask"] = run_dask()
        parts.append("Dask (median of 3 side-by-side rounds):\n\n" + dask_table(result["dask"]))
    print("wrote", _report.write_json(os.path.join(_report.OUT_DIR, "tiles.json"), result))
    body = "\n\n".join(parts)
    print("\n" + body)
    if args.append_results:
        head = (f"Machine: {machine_line()}  \nCommand: `python benchmarks/bench_tiles.py`  \n"
                f"DECONV_EXT_CPU_FFT={os.environ['DECONV_EXT_CPU_FFT']}; tiled = "
                f"deconv_ext.tiling.deconvolve_tiled, dask = deconv_ext.dask.deconvolve.\n\n")
        print("appended to", _report.append_results(
            f"{today()} — tiled solve: seams, memory, speed, Dask (CPU)", head + body))


if __name__ == "__main__":
    main()
