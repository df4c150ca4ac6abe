"""Every ``torch.ops.deconv_ext`` op checks every tensor argument before it touches data.

The reproductions that used to end the process (SIGFPE, SIGSEGV) or return
uninitialised memory run in a subprocess, so that a regression fails its
test instead of killing the suite. ``tests/op_fuzz.py`` drives random good
and bad arguments into every op against float64 oracles.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import deconv_ext  # noqa: F401  (loads the ops)

ops = torch.ops.deconv_ext
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run_isolated(code: str, timeout: float = 120):
    """Run ``code`` in a fresh interpreter (deconv_ext and torch imported)."""
    prelude = "import torch, deconv_ext\nops = torch.ops.deconv_ext\n"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def expect_error(code: str, *words: str):
    """``code`` raises ValueError/TypeError/RuntimeError whose message has ``words``."""
    wrapped = (
        "try:\n" + "".join("    " + line + "\n" for line in code.splitlines()) +
        "except (ValueError, TypeError, RuntimeError) as exc:\n"
        "    print('ERROR', type(exc).__name__, exc)\n"
        "else:\n"
        "    print('NO ERROR')\n")
    r = run_isolated(wrapped)
    assert r.returncode == 0, f"died with status {r.returncode}: {r.stderr[-2000:]}"
    assert "ERROR" in r.stdout and "NO ERROR" not in r.stdout, r.stdout
    for w in words:
        assert w in r.stdout, r.stdout


@pytest.mark.parametrize("mode", ["circular", "symmetric", "reflect", "replicate"])
@pytest.mark.parametrize("shape", [(2, 0, 5), (2, 5, 0), (0, 0)])
def test_padding_an_empty_plane_is_an_error_not_a_signal(mode, shape):
    expect_error(f"ops.pad(torch.zeros({shape}), 0, 0, 4, 4, {mode!r})", "empty", mode)


def test_zero_padding_an_empty_plane_gives_zeros():
    out = ops.pad(torch.zeros(2, 0, 5), 1, 1, 4, 4, "zeros")
    assert out.shape == (2, 4, 4) and out.eq(0).all()
    g = ops.pad_backward(torch.ones(2, 0, 5), 0, 0, 3, 3, "zeros")
    assert g.shape == (2, 3, 3) and g.eq(0).all()


def _solve_args(dtype=torch.complex128):
    torch.manual_seed(0)
    y = torch.randn(2, 5, 4, dtype=dtype)
    k = torch.randn(5, 4, dtype=dtype)
    return y, k


@pytest.mark.parametrize("bad, words", [
    ("k = k.to(torch.complex64)", "k dtype ComplexFloat differs"),
    ("thresh = thresh.to(torch.float32)", "thresh must be Double"),
    ("reg = torch.ones(5, 4, dtype=torch.float32)", "reg must be Double"),
])
def test_spectral_solve_backward_checks_every_dtype(bad, words):
    # complex128 g, y with a complex64 k (or a float32 thresh/reg) read the
    # raw bytes of the wrong type: SIGSEGV or errors of 1e6.
    expect_error(
        "torch.manual_seed(0)\n"
        "g = torch.randn(2, 5, 4, dtype=torch.complex128); y = torch.randn_like(g)\n"
        "k = torch.randn(5, 4, dtype=torch.complex128); reg = None\n"
        "thresh = torch.tensor(0.1, dtype=torch.float64)\n"
        f"{bad}\n"
        "ops.spectral_solve_backward(g, y, k, reg, 0.1, thresh)", words)


def test_deconv2d_grad_k_checks_thresh_and_reg_dtypes():
    expect_error(
        "x = torch.randn(6, 6); k = torch.randn(6, 4, dtype=torch.complex64)\n"
        "ops.deconv2d_grad_k(torch.randn(6, 6), x, k, None, 0.1, torch.tensor(0.0, "
        "dtype=torch.float64), False)", "thresh must be")


@pytest.mark.parametrize("call", [
    "ops.spectral_solve(y, k.to('meta'), None, 0.1, t)",
    "ops.spectral_solve(y, k, torch.ones(5, 4, dtype=torch.float64, device='meta'), 0.1, t)",
    "ops.spectral_mul(y, k.to('meta'), False)",
    "ops.channel_mix(y[:, None], torch.ones(1, 1, 1, 5, 4, dtype=y.dtype, device='meta'), False)",
    "ops.dct_solve(torch.randn(5, 4, dtype=torch.float64), torch.ones(5, 4, dtype=torch.float64, "
    "device='meta'))",
    "ops.deconv2d(torch.randn(5, 6, dtype=torch.float64), k, None, 0.1, t.to('meta'), False)",
])
def test_a_meta_operand_beside_cpu_tensors_is_named(call):
    # The CPU kernel is picked when one operand is on the CPU; a meta operand
    # beside it was read as memory (uninitialised results).
    expect_error("y = torch.randn(2, 5, 4, dtype=torch.complex128)\n"
                 "k = torch.randn(5, 4, dtype=torch.complex128)\n"
                 "t = torch.tensor(0.0, dtype=torch.float64)\n" + call, "meta")


def test_sparse_operands_are_refused():
    y, k = _solve_args()
    t = torch.tensor(0.0, dtype=torch.float64)
    # Through the dispatcher: no kernel for the sparse backend, which it names.
    with pytest.raises(NotImplementedError, match="SparseCPU"):
        ops.spectral_solve(y, k.to_sparse(), None, 0.1, t)
    # Straight into the kernels (deconv_ext._C): the kernel's own check.
    cpp = deconv_ext.execution.library.cpp
    with pytest.raises(TypeError, match="k must be a dense"):
        cpp.spectral_solve_(y.clone(), k.to_sparse(), None, 0.1, t)
    with pytest.raises(TypeError, match="image must be a dense"):
        cpp.deconv2d(torch.randn(5, 6, dtype=torch.float64).to_sparse(), k, None, 0.1, t, False)


def test_in_place_solve_refuses_a_stride_0_output_and_a_leaf_requiring_grad():
    y, k = _solve_args()
    t = torch.tensor(0.0, dtype=torch.float64)
    with pytest.raises(ValueError, match="share memory"):
        ops.spectral_solve_(y[:1].clone().expand(2, 5, 4), k, None, 0.1, t)
    leaf = y.clone().requires_grad_()
    with pytest.raises((ValueError, RuntimeError), match="leaf"):
        ops.spectral_solve_(leaf, k, None, 0.1, t)
    with pytest.raises(ValueError, match="partially overlaps"):
        big = torch.randn(6, 4, dtype=torch.complex128)
        ops.spectral_solve_(big[:5], big[1:], None, 0.1, t)
    with torch.no_grad():  # as an optimiser's in-place update of a parameter
        ops.spectral_solve_(leaf, k, None, 0.1, t)
    ref = torch.conj(k) * y / (k.abs() ** 2 + 0.1)
    torch.testing.assert_close(leaf.detach(), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eps", [float("nan"), float("inf"), -1.0])
def test_eps_must_be_finite_and_non_negative(eps):
    y, k = _solve_args()
    t = torch.tensor(0.0, dtype=torch.float64)
    with pytest.raises(ValueError, match="eps must be a finite number"):
        ops.spectral_solve(y, k, None, eps, t)
    with pytest.raises(ValueError, match="eps must be a finite number"):
        ops.deconv2d(torch.randn(5, 6, dtype=torch.float64), k, None, eps, t, False)


def test_negated_views_into_channel_mix_are_read_by_value():
    torch.manual_seed(1)
    y = torch.randn(2, 3, 4, 5, dtype=torch.complex128)
    g = torch.randn(1, 2, 3, 4, 5, dtype=torch.complex128)
    want = ops.channel_mix(y, g, False)
    got = ops.channel_mix(torch._neg_view(-y), torch._neg_view(-g), False)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    a = torch.randn(2, 2, 4, 5, dtype=torch.complex128)
    torch.testing.assert_close(ops.channel_mix_outer(torch._neg_view(-a), y, 1),
                               ops.channel_mix_outer(a, y, 1), rtol=0, atol=0)


def test_gradient_shape_must_broadcast():
    y, k = _solve_args()
    with pytest.raises(RuntimeError, match="k_shape of shape .* does not broadcast"):
        ops.spectral_mul_grad_k(y, y, [3, 4], False)
    with pytest.raises(ValueError, match="does not fit"):
        ops.kernel_spectrum_backward(torch.randn(5, 4, dtype=torch.complex128), 7, 3, 5, 6)


@pytest.mark.parametrize("seed", range(4))
def test_random_arguments_into_every_op_give_a_result_or_a_clear_error(seed):
    n = 250
    r = subprocess.run([sys.executable, os.path.join(HERE, "op_fuzz.py"), str(seed), str(n)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    lines = r.stdout.splitlines()
    fails = [json.loads(line[5:]) for line in lines if line.startswith("FAIL ")]
    last = next((line for line in reversed(lines) if line.startswith("CASE ")), "no case")
    assert r.returncode in (0, 1), f"died with status {r.returncode} in {last}: {r.stderr[-1500:]}"
    assert f"DONE {n} cases" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert not fails, json.dumps(fails[:10], indent=1)
