"""PSF constructors and --psf parsing: normalisation, centring, direction, errors."""
from __future__ import annotations

import math

import pytest
import torch

from deconv_ext import psf as P
from deconv_ext.app.psf_spec import PSFSpecError, parse_spec


def _centroid(k: torch.Tensor):
    k = k.double()
    r = torch.arange(k.shape[0], dtype=torch.float64)
    c = torch.arange(k.shape[1], dtype=torch.float64)
    return float((k.sum(1) * r).sum()), float((k.sum(0) * c).sum())


@pytest.mark.parametrize("k", [P.gaussian(1.3), P.gaussian(2.0, 9), P.box(5), P.box((3, 7)),
                               P.motion(9, 30), P.motion(4.5, -70), P.disk(2.5)],
                         ids=["g", "g9", "box5", "box3x7", "motion", "motion-frac", "disk"])
def test_sum_one_nonnegative_and_centred(k):
    assert abs(float(k.double().sum()) - 1) < 1e-6 and float(k.min()) >= 0
    cy, cx = _centroid(k)
    assert abs(cy - k.shape[0] // 2) < 1e-6 and abs(cx - k.shape[1] // 2) < 1e-6


def test_gaussian_matches_closed_form():
    k = P.gaussian(1.5, 7, dtype=torch.float64)
    assert k.shape == (7, 7)
    assert math.isclose(float(k[3, 4] / k[3, 3]), math.exp(-0.5 / 1.5 ** 2), rel_tol=1e-12)


def test_motion_direction_and_length():
    horizontal = P.motion(7, 0)
    assert horizontal.shape == (9, 9)
    assert torch.count_nonzero(horizontal[4]) == 7 and float(horizontal[4].sum()) > 0.999
    up = P.motion(7, 90)  # +90 degrees points up on screen: a vertical line
    assert float(up[:, 4].sum()) > 0.999
    diag = P.motion(9, 45)
    # Rows grow downwards: +45 degrees goes up and to the right.
    assert float(diag[3, 7]) > 0 and float(diag[3, 3]) == 0


def test_disk_radius():
    k = P.disk(3)
    assert k.shape == (7, 7) and float(k[3, 0]) > 0 and float(k[0, 0]) == 0


@pytest.mark.parametrize("spec,expected", [("gaussian:2", P.gaussian(2.0)),
                                           ("gaussian:2,9", P.gaussian(2.0, 9)),
                                           ("box:5", P.box(5)), ("motion:9,30", P.motion(9, 30)),
                                           ("DISK:2.5", P.disk(2.5))])
def test_parse_spec(spec, expected):
    assert torch.equal(parse_spec(spec), expected)


@pytest.mark.parametrize("spec", ["", "foo:1", "box:", "box:1.5", "gaussian:0", "motion:3,4,5",
                                  "disk:inf", "nofile.npy"])
def test_parse_spec_errors(spec):
    with pytest.raises(PSFSpecError):
        parse_spec(spec)
