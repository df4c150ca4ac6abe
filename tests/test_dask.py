"""deconv_ext.dask on a real two-process LocalCluster, against the in-memory tiled solve."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import deconv_ext as dx  # noqa: E402
import deconv_ext.dask as ddx  # noqa: E402
from deconv_ext.tiling import deconvolve_tiled, extension_index, filter_reach  # noqa: E402

pytestmark = pytest.mark.dask

BOUNDARIES = ("reflect", "symmetric", "replicate", "zeros")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                       host="127.0.0.1", dashboard_address=None,
                                       memory_limit="2GiB")
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def blurred(shape, psf, seed=0, dtype=np.float64):
    x = np.random.default_rng(seed).random(shape) + 0.5
    return dx.convolve(torch.from_numpy(x), psf.double(), boundary="reflect").numpy().astype(dtype)


@pytest.mark.parametrize("boundary", ["symmetric", "replicate", "zeros"])
def test_dask_boundary_modes_are_ours(boundary):
    """The mapped Dask mode extends exactly like our rule (Dask's 'reflect' is numpy's
    'symmetric'), with a depth beyond one reflection of a short chunk too."""
    from deconv_ext.plans.padded import FAST_PAD_MODE

    x = np.arange(6.0) + 1
    for depth in (2, 5):
        got = da.overlap.overlap(da.from_array(x, chunks=6), depth={0: depth},
                                 boundary={0: ddx.DASK_BOUNDARY[boundary]}).compute()
        idx = extension_index(-depth, 6 + 2 * depth, 6, FAST_PAD_MODE[boundary])
        np.testing.assert_array_equal(got, x[idx])


def test_dask_has_no_mode_for_our_reflect():
    x = np.arange(6.0) + 1
    ours = x[extension_index(-2, 10, 6, "reflect")]
    for mode in ("reflect", "nearest", "periodic"):
        got = da.overlap.overlap(da.from_array(x, chunks=6), depth={0: 2},
                                 boundary={0: mode}).compute()
        assert not np.array_equal(got, ours)
    assert ddx.DASK_BOUNDARY["reflect"] is None


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_cluster_matches_in_memory(client, boundary):
    psf, eps = dx.gaussian(2.0), 1e-2
    y = blurred((2, 280, 330), psf)  # chunks 100, 100, 80 and 120, 120, 90
    ref = deconvolve_tiled(y, psf, eps, boundary=boundary, tile=(64, 64), tol=1e-10)
    d = da.from_array(y, chunks=(1, 100, 120))
    lazy = ddx.deconvolve(d, psf, eps, boundary=boundary, tol=1e-10)
    assert isinstance(lazy, da.Array) and lazy.chunks == d.chunks
    x = client.compute(lazy).result()
    assert x.dtype == np.float64
    assert np.abs(x - ref).max() <= 1e-6 * np.abs(ref).max()


def test_cluster_float32_default_tol_and_one_chunk_axis(client):
    psf, eps = dx.motion(9, 0.0), 1e-2
    y = blurred((200, 900), psf, seed=1, dtype=np.float32)
    r = filter_reach(psf, eps)
    assert r.rows == 0
    ref = deconvolve_tiled(y, psf, eps, tile=(256, 256))
    # rows: one chunk (depth 0, extended in the chunk); columns: chunks >= the reach
    d = da.from_array(y, chunks=(200, max(r.cols, 300)))
    x = client.compute(ddx.deconvolve(d, psf, eps)).result()
    assert x.dtype == np.float32
    assert np.abs(x - ref).max() <= 1e-5 * np.abs(ref).max()


def test_plans_cached_per_worker_and_threads(client):
    ddx_plans = client.run(lambda: __import__("deconv_ext.dask").dask.clear_plans())
    assert len(ddx_plans) == 2
    psf = dx.gaussian(1.5)
    y = blurred((240, 240), psf, seed=2)
    # 16 chunks; Dask pads the edge chunks itself ('symmetric'), so every
    # overlapped block has one shape and each worker builds one plan.
    d = da.from_array(y, chunks=(60, 60))
    client.compute(ddx.deconvolve(d, psf, 1e-2, boundary="symmetric")).result()
    n_plans = client.run(lambda: len(__import__("deconv_ext.dask").dask._plans))
    threads = client.run(torch.get_num_threads)
    assert max(n_plans.values()) == 1 and sum(n_plans.values()) >= 1
    assert set(threads.values()) == {1}


def test_integer_input_threaded_scheduler():
    psf = dx.gaussian(1.0)
    y = (blurred((90, 110), psf, seed=3) * 100).astype(np.uint16)
    x = ddx.deconvolve(da.from_array(y, chunks=(45, 55)), psf, 1e-2).compute()
    assert x.dtype == np.float32
    ref = deconvolve_tiled(y, psf, 1e-2, tile=30)
    assert np.abs(x - ref).max() <= 1e-4 * np.abs(ref).max()


def test_bad_input():
    psf = dx.gaussian(2.0)
    y = da.zeros((300, 300), chunks=(100, 100))
    with pytest.raises(ValueError, match="chunks along H"):
        ddx.deconvolve(da.zeros((300, 300), chunks=(20, 300)), psf, 1e-4)
    # the suggested rechunk is accepted
    with pytest.raises(ValueError, match=r"rechunk\(\{0: 150\}\)"):
        ddx.deconvolve(da.zeros((300, 300), chunks=(100, 300)), psf, 1e-4, overlap=(120, 0))
    ddx.deconvolve(da.zeros((300, 300), chunks=(150, 300)), psf, 1e-4, overlap=(120, 0))
    with pytest.raises(ValueError, match="circular"):
        ddx.deconvolve(y, psf, boundary="circular")
    with pytest.raises(TypeError, match="dask.array"):
        ddx.deconvolve(np.zeros((300, 300)), psf)
    with pytest.raises(ValueError, match="psf"):
        ddx.deconvolve(y, psf[None])
    with pytest.raises(ValueError, match="overlap"):
        ddx.deconvolve(y, psf, overlap=-3)
    with pytest.raises(ValueError, match="torch_threads"):
        ddx.deconvolve(y, psf, torch_threads=0)
    with pytest.raises(TypeError, match="dtype"):
        ddx.deconvolve(y.astype(np.complex64), psf)


def test_import_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(ImportError, match=r"deconv_ext\[dask\]"):
        ddx.deconvolve(None, dx.gaussian(1.0))
