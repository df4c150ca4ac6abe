"""Production export: torch.export, AOTInductor packages, torch.jit.trace.

A model using the library goes through ``torch.export`` and runs from the
ExportedProgram; compiled by AOTInductor it runs in a fresh interpreter that
loads only torch and the extension's shared library (the ops' schemas and
CPU kernels), not the deconv_ext Python package. Results are compared with
eager calls and with the pure-torch reference (``deconv_ext.reference``).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import deconv_ext as dx
from deconv_ext import execution, reference

pytestmark = pytest.mark.skipif(not execution.available(), reason="needs the C++ extension")

TESTS = os.path.dirname(os.path.abspath(__file__))
H, W = 20, 17  # even x odd, non-square


class PlanModel(torch.nn.Module):
    """A model calling a DeconvPlan between two ordinary layers."""

    def __init__(self):
        super().__init__()
        psf = dx.motion(5, 30, dtype=torch.float64)
        self.plan = dx.DeconvPlan(psf, (H, W), eps=1e-2, reg="laplacian")
        self.psf = psf

    def forward(self, x):
        return self.plan(torch.tanh(x)) * 2.0 + 1.0


def _conv_module():
    gen = torch.Generator().manual_seed(11)
    conv = torch.nn.Conv2d(3, 2, 3, padding=1, padding_mode="circular", bias=True).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen, dtype=torch.float64))
        conv.bias.copy_(torch.randn(2, generator=gen, dtype=torch.float64))
    return conv, dx.ConvPinv2d.from_conv(conv, (H, W), eps=1e-3)


def _input(channels, seed=3, batch=2):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, H, W, generator=gen, dtype=torch.float64) + 0.1


def _plan_oracle(model, x):
    return reference.deconvolve(torch.tanh(x), model.psf, eps=1e-2, reg="laplacian") * 2.0 + 1.0


def test_export_deconv_plan_model():
    model = PlanModel().eval()
    x = _input(3)
    ep = torch.export.export(model, (x,))
    assert any("deconv_ext" in str(n.target) for n in ep.graph.nodes)  # the op, not its pieces
    fresh = _input(3, seed=4)  # not the example input the export saw
    got = ep.module()(fresh)
    torch.testing.assert_close(got, model(fresh), rtol=0, atol=1e-12)
    torch.testing.assert_close(got, _plan_oracle(model, fresh), rtol=0, atol=1e-9)


def test_export_conv_pinv2d():
    conv, inv = _conv_module()
    x = _input(3)
    y = conv(x)
    ep = torch.export.export(inv.eval(), (y,))
    got = ep.module()(y)
    torch.testing.assert_close(got, inv(y), rtol=0, atol=1e-12)
    # An independent oracle: the Tikhonov normal equations of the dense operator.
    A = torch.stack([conv(e.reshape(1, 3, H, W))[0].reshape(-1) - conv.bias.repeat_interleave(H * W)
                     for e in torch.eye(3 * H * W, dtype=torch.float64)], dim=1)
    b = (y - conv.bias[None, :, None, None]).reshape(2, -1).T
    want = torch.linalg.solve(A.T @ A + 1e-3 * torch.eye(A.shape[1], dtype=torch.float64), A.T @ b)
    torch.testing.assert_close(got.reshape(2, -1).T, want, rtol=0, atol=1e-8)


AOTI_RUN = textwrap.dedent("""
    import sys
    import torch
    torch.ops.load_library(sys.argv[1])       # the ops' schemas and CPU kernels
    runner = torch._inductor.aoti_load_package(sys.argv[2])
    x = torch.load(sys.argv[3])
    torch.save(runner(x), sys.argv[4])
    print(sorted(m for m in sys.modules if m.split(".")[0] == "deconv_ext"))
""")


@pytest.mark.slow
def test_aoti_package_runs_with_only_torch_and_the_shared_library(tmp_path):
    model = PlanModel().eval()
    x = _input(3, seed=6)
    ep = torch.export.export(model, (x,))
    pkg = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "plan.pt2"))
    torch.save(x, tmp_path / "x.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no deconv_ext on the path
    proc = subprocess.run([sys.executable, "-c", AOTI_RUN, execution.library.extension_path(), pkg,
                           str(tmp_path / "x.pt"), str(tmp_path / "out.pt")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"  # the Python package was never imported
    got = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(got, model(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(got, _plan_oracle(model, x), rtol=0, atol=1e-6)


def test_jit_trace_conv_pinv2d_records_the_ops():
    conv, inv = _conv_module()
    y = conv(_input(3))
    with pytest.warns(Warning):  # torch.jit.trace is deprecated (and says so)
        traced = torch.jit.trace(inv, (y,), check_trace=False)
    assert "deconv_ext::" in str(traced.graph)
    fresh = conv(_input(3, seed=9))
    torch.testing.assert_close(traced(fresh), inv(fresh), rtol=0, atol=1e-12)


def test_jit_trace_deconv_plan_records_the_ops_or_refuses():
    model = PlanModel().eval()
    x = _input(3)
    try:
        traced = torch.jit.trace(model, (x,), check_trace=False)
    except RuntimeError as exc:  # refusing clearly is acceptable
        assert "trace" in str(exc).lower()
        return
    fresh = _input(3, seed=12)
    torch.testing.assert_close(traced(fresh), model(fresh), rtol=0, atol=1e-12)
