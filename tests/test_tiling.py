"""Tiled deconvolution (deconv_ext.tiling): reach, seams, arrays, memory maps, bad input.

The oracle for the tiled result is independent of the library: the whole
image extended with ``np.pad`` (by far more than the overlap), the Tikhonov
filter applied with ``numpy.fft`` and cropped -- the border-correct
semantics of the module docstring.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import deconv_ext as dx
from deconv_ext import tiling
from deconv_ext.tiling import (deconvolve_tiled, extension_index, filter_reach,
                               impulse_response, tail_mass)

NP_MODE = {"reflect": "reflect", "symmetric": "symmetric", "replicate": "edge", "zeros": "edge"}
BOUNDARIES = ("reflect", "symmetric", "replicate", "zeros")


def np_transfer(psf: np.ndarray, size) -> np.ndarray:
    """fft2 of the PSF zero-padded to ``size`` with its origin (kh//2, kw//2) rolled to (0, 0)."""
    kh, kw = psf.shape
    buf = np.zeros(size)
    buf[:kh, :kw] = psf
    return np.fft.fft2(np.roll(buf, (-(kh // 2), -(kw // 2)), axis=(0, 1)))


def np_border_correct(y: np.ndarray, psf: np.ndarray, eps: float, boundary: str, pad) -> np.ndarray:
    """The image extended by the rule by ``pad`` per side, Tikhonov-solved circularly, cropped."""
    lead = [(0, 0)] * (y.ndim - 2)
    yp = np.pad(y.astype(np.float64), lead + [(pad[0], pad[0]), (pad[1], pad[1])],
                mode=NP_MODE[boundary])
    K = np_transfer(psf.astype(np.float64), yp.shape[-2:])
    X = np.conj(K) * np.fft.fft2(yp) / (np.abs(K) ** 2 + eps)
    x = np.fft.ifft2(X).real
    return x[..., pad[0]:pad[0] + y.shape[-2], pad[1]:pad[1] + y.shape[-1]]


def blurred(rng, shape, psf, boundary="reflect", dtype=np.float64) -> np.ndarray:
    x = rng.random(shape) + 0.5
    return dx.convolve(torch.from_numpy(x), psf.double(), boundary=boundary).numpy().astype(dtype)


# -- extension rule ------------------------------------------------------------

@pytest.mark.parametrize("mode,np_mode", [("reflect", "reflect"), ("symmetric", "symmetric"),
                                          ("replicate", "edge")])
@pytest.mark.parametrize("n,pad", [(5, 3), (5, 13), (1, 4), (2, 7), (7, 0)])
def test_extension_index_matches_np_pad(mode, np_mode, n, pad):
    if mode == "reflect" and n == 1:
        np_mode = "edge"  # numpy's reflect of one sample is that sample
    src = np.arange(n) + 10
    idx = extension_index(-pad, n + 2 * pad, n, mode)
    np.testing.assert_array_equal(src[idx], np.pad(src, pad, mode=np_mode))


# -- the inverse filter's reach -------------------------------------------------

def np_response(psf, size, eps):
    K = np_transfer(psf.numpy().astype(np.float64), size)
    return np.fft.ifft2(np.conj(K) / (np.abs(K) ** 2 + eps)).real


def np_outside(h, mh, mw):
    Nh, Nw = h.shape
    i, j = np.arange(Nh), np.arange(Nw)
    inside = ((np.minimum(i, Nh - i) <= mh)[:, None] & (np.minimum(j, Nw - j) <= mw)[None, :])
    a = np.abs(h)
    return a[~inside].sum() / a.sum()


@pytest.mark.parametrize("psf,eps", [(dx.gaussian(2.0), 1e-2), (dx.gaussian(3.0), 1e-4),
                                     (dx.motion(9, 30.0), 1e-3)])
@pytest.mark.parametrize("tol", [1e-4, 1e-7])
def test_filter_reach_tail_against_numpy(psf, eps, tol):
    r = filter_reach(psf, eps, tol=tol)
    h = np_response(psf, (1024, 1024), eps)
    assert np_outside(h, r.rows, r.cols) <= tol
    assert abs(np.abs(h).sum() - r.l1) <= 1e-6 * r.l1
    assert r.tail <= tol
    # Not grossly larger than needed: half the margin leaves more than tol out.
    assert np_outside(h, r.rows // 2, r.cols // 2) > tol
    # The plan's own filter gives the same reach (computed again, not cached).
    tiling._reach_cache.clear()
    plan = dx.DeconvPlan(psf, (64, 64), eps=eps)
    assert filter_reach(plan, tol=tol) == r
    assert filter_reach(psf, eps, tol=tol) is filter_reach(psf, eps, tol=tol)


def test_filter_reach_motion_is_anisotropic():
    r = filter_reach(dx.motion(15), 1e-2, tol=1e-6)
    assert r.rows == 0 and r.cols > 100
    rv = filter_reach(dx.motion(15, 90.0), 1e-2, tol=1e-6)
    assert (rv.rows, rv.cols) == (r.cols, r.rows)


def test_filter_reach_grows_with_smaller_eps_and_tol():
    psf = dx.gaussian(2.0)
    a, b, c = (filter_reach(psf, 1e-2, tol=1e-4), filter_reach(psf, 1e-4, tol=1e-4),
               filter_reach(psf, 1e-2, tol=1e-8))
    assert b.rows > a.rows and c.rows > a.rows and b.l1 > a.l1


def test_impulse_response_is_the_plan_solve_of_a_delta():
    psf = dx.gaussian(1.5).double()
    h = impulse_response(psf, (64, 80), 1e-2, reg="laplacian")
    y = torch.randn(64, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x = dx.DeconvPlan(psf, (64, 80), eps=1e-2, reg="laplacian")(y)
    # x = h (*) y circularly
    x2 = torch.fft.irfft2(torch.fft.rfft2(h) * torch.fft.rfft2(y), s=(64, 80))
    torch.testing.assert_close(x, x2, rtol=0, atol=1e-10)
    rel, ab = tail_mass(h, (32, 40))
    assert rel == 0.0 and ab == 0.0


def test_filter_reach_refuses_a_filter_that_does_not_decay(monkeypatch):
    monkeypatch.setattr(tiling, "_MAX_RESPONSE_PIXELS", 1 << 18)
    with pytest.raises(ValueError, match="overlap="):
        filter_reach(dx.gaussian(3.0), 0.0, method="pinv", tol=1e-9)


@pytest.mark.parametrize("psf,kwargs", [(dx.gaussian(3.0), dict(eps=0.0, method="pinv")),
                                        (dx.motion(15, 30.0), dict(eps=0.0))])
def test_filter_reach_fails_fast_without_decay(psf, kwargs):
    """A hard spectral cut-off spreads its mass evenly at any grid size: refused
    from the grids up to 4096^2 (seconds), not after the capped one."""
    calls = []
    real = tiling._folded_response

    def counting(psf, size, *a):
        calls.append(size)
        return real(psf, size, *a)

    tiling._reach_cache.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tiling, "_folded_response", counting)
        with pytest.raises(ValueError) as e:
            filter_reach(psf, tol=1e-6, **kwargs)
    msg = str(e.value)
    for part in ("filter_reach(psf", f"method={kwargs.get('method', 'tikhonov')!r}", "eps=0.0",
                 "tol=1e-06", "does not decay", "overlap=", "larger eps"):
        assert part in msg
    assert max(a * b for a, b in calls) <= 4096 * 4096


# Reaches of the quarter-grid rule (main before issue 17), where it worked.
OLD_REACH = [(dx.gaussian(3.0), 1e-4, (86, 86)), (dx.gaussian(3.0), 1e-3, (69, 69)),
             (dx.gaussian(3.0), 1e-2, (63, 63)), (dx.gaussian(3.0), 1e-1, (50, 50)),
             (dx.motion(15), 1e-4, (0, 3020)), (dx.motion(15), 1e-3, (0, 980)),
             (dx.motion(15), 1e-2, (0, 324)), (dx.motion(15), 1e-1, (0, 119)),
             (dx.motion(15, 60.0), 1e-3, (812, 468)), (dx.disk(5), 1e-2, (154, 154))]


@pytest.mark.parametrize("psf,eps,old", OLD_REACH)
def test_filter_reach_agrees_with_the_quarter_grid_rule(psf, eps, old):
    r = filter_reach(psf, eps)
    assert all(o <= n <= o + 3 for o, n in zip(old, r.margin)), (r.margin, old)
    assert r.tail <= 1e-6


def np_outside_large(psf, eps, margin, factor=2):
    """Tail outside ``margin`` on a numpy grid ``factor`` x the reach's (relative)."""
    size = tuple(spectral_fast(factor * s) for s in filter_reach(psf, eps).response_size)
    return np_outside(np_response(psf, size, eps), *margin)


def spectral_fast(n):
    from deconv_ext.maths.spectral import next_fast_size
    return next_fast_size(n)


@pytest.mark.parametrize("angle", [30.0, 45.0, 80.0])
def test_oblique_motion_reach_is_honest(angle):
    """The reported tail bounds the true one (a numpy grid twice as large), the
    margin is tight (a margin 5 % smaller leaves more than tol out), and the
    aliasing allowance is part of the report."""
    psf, eps = dx.motion(15, angle), 1e-2
    r = filter_reach(psf, eps)
    true = np_outside_large(psf, eps, r.margin)
    assert true <= r.tail <= 1e-6
    smaller = (int(0.95 * r.rows), int(0.95 * r.cols))
    assert np_outside_large(psf, eps, smaller) > 1e-6
    # 7/16 of the grid holds the margin: far less than the quarter-grid rule's 4x.
    assert all(m <= 7 * n // 16 for m, n in zip(r.margin, r.response_size))


@pytest.mark.slow
@pytest.mark.parametrize("angle", [30.0, 45.0])
def test_oblique_motion_reach_at_eps_1e4(angle):
    """Issue 17: 15 px motion at 30/45 degrees, eps=1e-4 (a reach of ~2000-2500
    px, refused by the quarter-grid rule); checked against a grid 1.4x larger."""
    psf, eps = dx.motion(15, angle), 1e-4
    r = filter_reach(psf, eps)
    expect = {30.0: (1419, 2458), 45.0: (2035, 2035)}[angle]  # margins on an 8192^2 grid
    assert all(e <= m <= e + 5 for e, m in zip(expect, r.margin)), r.margin
    assert np_outside_large(psf, eps, r.margin, factor=1.4) <= r.tail <= 1e-6


def test_filter_spectrum_is_the_solve_of_a_constant_spectrum():
    psf = torch.stack([dx.gaussian(2.0, size=13), dx.motion(9, 30.0, size=13)]).double()
    for kw in (dict(eps=1e-2), dict(eps=1e-3, reg="laplacian"), dict(eps=0.0, method="pinv")):
        plan = dx.DeconvPlan(psf, (64, 81), **kw)
        g = plan.filter_spectrum()
        G = torch.fft.rfft2(impulse_response(psf, (64, 81), **kw))
        torch.testing.assert_close(g, G, rtol=1e-9, atol=1e-12 * float(G.abs().max()))
        parts = torch.cat([plan.filter_spectrum(slice(0, 11)), plan.filter_spectrum(slice(11, None))],
                          -2)
        assert torch.equal(parts, g)
    with pytest.raises(ValueError, match="circular"):
        dx.DeconvPlan(psf, (64, 81), boundary="reflect").filter_spectrum()
    with pytest.raises(ValueError, match="fixed eps"):
        dx.DeconvPlan(psf[0], (64, 81), eps="gcv").filter_spectrum()


# -- tiled == border-correct untiled solve ---------------------------------------

@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("tile", [(64, 96), (45, 77)])
def test_tiled_matches_border_correct_solve(boundary, tile):
    rng = np.random.default_rng(0)
    psf, eps = dx.gaussian(2.0), 1e-3
    y = blurred(rng, (131, 203), psf, boundary)
    x, info = deconvolve_tiled(y, psf, eps, boundary=boundary, tile=tile, tol=1e-6,
                               return_info=True)
    r = filter_reach(psf, eps, tol=1e-6)
    ref = np_border_correct(y, psf.numpy(), eps, boundary, (3 * r.rows, 3 * r.cols))
    err = np.abs(x - ref).max()
    assert info.overlap == r.margin and info.tol == 1e-6
    assert info.value_range == pytest.approx(y.max() - y.min())
    assert err <= info.seam_bound + 1e-12
    assert info.n_tiles == -(-131 // tile[0]) * -(-203 // tile[1])
    # With a far smaller tol the seams vanish to rounding.
    x2 = deconvolve_tiled(y, psf, eps, boundary=boundary, tile=tile, tol=1e-12)
    assert np.abs(x2 - ref).max() <= 1e-9 * np.abs(ref).max()


def torch_border_correct(y: np.ndarray, psf, eps: float, pad) -> np.ndarray:
    """np_border_correct (reflect) through a float64 circular plan: half the memory
    of numpy's complex fft2 at the ~5000^2 an eps=1e-4 motion blur needs."""
    yp = torch.from_numpy(np.pad(y, [(pad[0], pad[0]), (pad[1], pad[1])], mode="reflect"))
    x = dx.DeconvPlan(psf.double(), tuple(yp.shape), eps=eps)(yp).numpy()
    return x[pad[0]:pad[0] + y.shape[0], pad[1]:pad[1] + y.shape[1]]


@pytest.mark.parametrize("eps", [1e-2, pytest.param(1e-4, marks=pytest.mark.slow)])
@pytest.mark.parametrize("angle", [30.0, 45.0])
def test_oblique_motion_seams_under_the_reported_bound(angle, eps):
    """Issue 17: overlap="auto" for oblique motion blur; the measured tiled vs
    untiled difference stays under TiledInfo.seam_bound, with an even and an
    odd tile. At eps=1e-4 the overlap (~2000-2500 px) exceeds the image: every
    buffer is mostly the image extended by the rule."""
    psf = dx.motion(15, angle)
    shape = (300, 420) if eps >= 1e-2 else (160, 200)
    y = blurred(np.random.default_rng(13), shape, psf)
    r = filter_reach(psf, eps)
    ref = torch_border_correct(y, psf, eps, (r.rows + 64, r.cols + 64))
    tiles = [(128, 128), (97, 143)] if eps >= 1e-2 else [(96, 128), (77, 101)]
    for tile in tiles:
        x, info = deconvolve_tiled(y, psf, eps, tile=tile, return_info=True)
        assert info.overlap == r.margin and info.tail == r.tail
        err = np.abs(x - ref).max()
        assert err <= info.seam_bound + 1e-12 * np.abs(ref).max(), (tile, err, info.seam_bound)
        # An honest bound need not be loose: within 1e-2 of the result's scale.
        assert info.seam_bound <= 1e-2 * np.abs(ref).max()


def test_tiled_motion_blur_leading_dims_and_torch_input():
    rng = np.random.default_rng(1)
    psf, eps = dx.motion(11, 20.0), 1e-2
    y = np.stack([blurred(rng, (97, 150), psf) for _ in range(3)]).reshape(3, 97, 150)
    ref = np.stack([np_border_correct(p, psf.numpy(), eps, "symmetric", (400, 400)) for p in y])
    x = deconvolve_tiled(torch.from_numpy(y), psf, eps, boundary="symmetric", tile=(40, 64),
                         tol=1e-9)
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float64 and x.shape == y.shape
    assert np.abs(x.numpy() - ref).max() <= 1e-7 * np.abs(ref).max()


def test_tiled_float32_seams_under_bound_and_under_1e4():
    rng = np.random.default_rng(2)
    psf, eps = dx.gaussian(3.0), 1e-4
    y = blurred(rng, (300, 420), psf, dtype=np.float32)
    x, info = deconvolve_tiled(y, psf, eps, tile=(128, 128), return_info=True)
    r = filter_reach(psf, eps)
    ref = np_border_correct(y, psf.numpy(), eps, "reflect", (3 * r.rows, 3 * r.cols))
    assert x.dtype == np.float32
    err = np.abs(x - ref).max()
    assert err <= info.seam_bound + 1e-5 * np.abs(ref).max()  # + float32 rounding
    assert err <= 1e-4 * np.abs(ref).max()


def test_tiled_equals_padded_deconvolve_away_from_the_border():
    """The plain padded path (PSF half-size pad) agrees with the tiled solve
    farther than the reach from the edges, and not near them (the prototype's
    finding, the reason for the border-correct semantics)."""
    rng = np.random.default_rng(4)
    psf, eps = dx.gaussian(3.0), 1e-4
    y = blurred(rng, (400, 400), psf)
    x, info = deconvolve_tiled(y, psf, eps, tile=(100, 100), return_info=True)
    full = dx.deconvolve(torch.from_numpy(y), psf.double(), eps, boundary="reflect").numpy()
    m = info.overlap[0] + 19
    inner = np.abs(x - full)[m:-m, m:-m].max()
    assert inner <= 2 * info.seam_bound
    assert np.abs(x - full).max() > 100 * max(inner, 1e-12)


def test_single_tile_and_tile_larger_than_image():
    rng = np.random.default_rng(5)
    psf = dx.gaussian(1.0)
    y = blurred(rng, (40, 30), psf)
    x = deconvolve_tiled(y, psf, 1e-2, tile=(1000, 1000), tol=1e-10)
    ref = np_border_correct(y, psf.numpy(), 1e-2, "reflect", (200, 200))
    assert np.abs(x - ref).max() <= 1e-9


def test_one_plan_serves_every_tile(monkeypatch):
    built = []
    real = tiling.DeconvPlan

    class Counting(real):
        def __init__(self, *a, **k):
            built.append(a[1])
            super().__init__(*a, **k)

    monkeypatch.setattr(tiling, "DeconvPlan", Counting)
    y = blurred(np.random.default_rng(6), (150, 170), dx.gaussian(1.0))
    _, info = deconvolve_tiled(y, dx.gaussian(1.0), 1e-2, tile=(32, 40), overlap=(20, 11),
                               return_info=True)
    assert info.n_tiles == 25
    # one tile plan; return_info with an explicit overlap adds one response plan
    assert built.count(info.fft_size) == 1 and len(built) == 2
    assert info.fft_size[0] >= 32 + 40 and info.fft_size[1] >= 40 + 22


def test_explicit_overlap_info_and_zero_overlap():
    rng = np.random.default_rng(7)
    psf = dx.gaussian(1.5)
    y = blurred(rng, (80, 90), psf)
    _, small = deconvolve_tiled(y, psf, 1e-2, tile=30, overlap=3, return_info=True)
    _, big = deconvolve_tiled(y, psf, 1e-2, tile=30, overlap=40, return_info=True)
    assert small.tol is None and small.tail > big.tail
    x0 = deconvolve_tiled(y, psf, 1e-2, tile=30, overlap=0)
    ref = np_border_correct(y, psf.numpy(), 1e-2, "reflect", (200, 200))
    assert np.abs(x0 - ref).max() > 1e-3  # no margin: visible seams


# -- arrays, memory maps, TIFF ---------------------------------------------------

def test_memmap_in_memmap_out(tmp_path):
    rng = np.random.default_rng(8)
    psf = dx.gaussian(2.0)
    y = blurred(rng, (150, 120), psf, dtype=np.float32)
    src = np.lib.format.open_memmap(tmp_path / "y.npy", mode="w+", dtype=np.float32,
                                    shape=y.shape)
    src[:] = y
    src.flush()
    src = np.load(tmp_path / "y.npy", mmap_mode="r")
    out = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32,
                                    shape=y.shape)
    res = deconvolve_tiled(src, psf, 1e-2, tile=(48, 64), out=out)
    assert res is out
    out.flush()
    x = np.load(tmp_path / "x.npy")
    expect = deconvolve_tiled(y, psf, 1e-2, tile=(48, 64))
    np.testing.assert_array_equal(x, expect)
    ref = np_border_correct(y, psf.numpy(), 1e-2, "reflect", (300, 300))
    assert np.abs(x - ref).max() <= 1e-5 * np.abs(ref).max()


def test_integer_image_and_float64_out():
    rng = np.random.default_rng(9)
    psf = dx.gaussian(1.0)
    y = (blurred(rng, (64, 64), psf) * 1000).astype(np.uint16)
    x = deconvolve_tiled(y, psf, 1e-2, tile=32)
    assert x.dtype == np.float32
    out = np.zeros((64, 64), np.float64)
    deconvolve_tiled(y, psf, 1e-2, tile=32, out=out)
    assert np.abs(out - x).max() <= 1e-3


def test_deconvolve_tiff_roundtrip(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(10)
    psf = dx.gaussian(2.0)
    y = blurred(rng, (100, 140), psf, dtype=np.float32)
    tifffile.imwrite(tmp_path / "in.tif", y)
    info = tiling.deconvolve_tiff(str(tmp_path / "in.tif"), str(tmp_path / "out.tif"), psf,
                                  1e-2, tile=(40, 50), return_info=True)
    x = tifffile.imread(tmp_path / "out.tif")
    np.testing.assert_array_equal(x, deconvolve_tiled(y, psf, 1e-2, tile=(40, 50)))
    assert info.n_tiles == 9
    # A failing check leaves no output file behind.
    with pytest.raises(ValueError, match="tile"):
        tiling.deconvolve_tiff(str(tmp_path / "in.tif"), str(tmp_path / "bad.tif"), psf, 1e-2,
                               tile=(4, 4))
    assert not (tmp_path / "bad.tif").exists()


def test_progress_bar(capsys):
    y = blurred(np.random.default_rng(11), (60, 60), dx.gaussian(1.0))
    deconvolve_tiled(y, dx.gaussian(1.0), 1e-2, tile=30, progress=True)
    assert "4/4" in capsys.readouterr().err


# -- bad input: a clear error, nothing written -----------------------------------

SENTINEL = -7.0


@pytest.fixture
def case():
    y = blurred(np.random.default_rng(12), (64, 80), dx.gaussian(1.0), dtype=np.float32)
    return y, dx.gaussian(1.0)


def _sentinel(shape, dtype=np.float32):
    return np.full(shape, SENTINEL, dtype)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(tile=(4, 40)), ValueError, "smaller than the PSF"),
    (dict(tile=0), ValueError, "tile"),
    (dict(overlap=-1), ValueError, "overlap=-1"),
    (dict(overlap=(3, -2)), ValueError, "overlap"),
    (dict(overlap="big"), ValueError, "overlap='big'"),
    (dict(overlap=True), ValueError, "overlap"),
    (dict(boundary="circular"), ValueError, "circular"),
    (dict(boundary="wrap"), ValueError, "boundary='wrap'"),
    (dict(tol=0.0), ValueError, "tol"),
    (dict(tol=2.0), ValueError, "tol"),
    (dict(eps=-1.0), ValueError, "eps"),
    (dict(eps=torch.ones(64, 80)), ValueError, "tensor"),
    (dict(method="lsq"), ValueError, "method"),
])
def test_bad_arguments_write_nothing(case, kwargs, exc, match):
    y, psf = case
    out = _sentinel(y.shape)
    args = dict(eps=1e-2, tile=32)
    args.update(kwargs)
    eps = args.pop("eps")
    with pytest.raises(exc, match=match):
        deconvolve_tiled(y, psf, eps, out=out, **args)
    assert (out == SENTINEL).all()


def test_bad_out(case, tmp_path):
    y, psf = case
    with pytest.raises(ValueError, match="shape"):
        deconvolve_tiled(y, psf, out=_sentinel((64, 81)))
    with pytest.raises(TypeError, match="dtype"):
        deconvolve_tiled(y, psf, out=np.zeros(y.shape, np.int32))
    with pytest.raises(TypeError, match="numpy array"):
        deconvolve_tiled(y, psf, out=torch.zeros(y.shape))
    with pytest.raises(TypeError, match="torch.Tensor"):
        deconvolve_tiled(torch.from_numpy(y), psf, out=np.zeros(y.shape, np.float32))
    ro = np.lib.format.open_memmap(tmp_path / "o.npy", mode="w+", dtype=np.float32,
                                   shape=y.shape)
    ro[:] = SENTINEL
    ro.flush()
    ro = np.load(tmp_path / "o.npy", mmap_mode="r")
    with pytest.raises(ValueError, match="read-only"):
        deconvolve_tiled(y, psf, out=ro)
    assert (np.load(tmp_path / "o.npy") == SENTINEL).all()
    with pytest.raises(ValueError, match="shares memory"):
        deconvolve_tiled(y, psf, out=y)
    t = torch.from_numpy(y.copy())
    with pytest.raises(ValueError, match="shares memory"):
        deconvolve_tiled(t, psf, out=t)


def test_bad_image_and_psf(case):
    y, psf = case
    with pytest.raises(TypeError, match="image"):
        deconvolve_tiled(y.tolist(), psf)
    with pytest.raises(TypeError, match="image has dtype"):
        deconvolve_tiled(y.astype(np.complex64), psf)
    with pytest.raises(ValueError, match="at least 2 dims"):
        deconvolve_tiled(y[0], psf)
    with pytest.raises(TypeError, match="psf"):
        deconvolve_tiled(y, [[1.0]])
    with pytest.raises(ValueError, match="larger than the image"):
        deconvolve_tiled(y[:4], psf)
