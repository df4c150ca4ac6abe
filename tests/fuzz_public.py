"""Random good and bad inputs into every public function: a result or a clear error.

Run as a script (``python tests/fuzz_public.py SEED N``), in a subprocess of
``tests/test_hardening.py``, so that a signal or a hang is a failure of that
test rather than of the suite. Each case draws a function, and for each of
its arguments a value from a pool of valid and invalid ones (dtypes,
layouts, sizes including 0 and absurd, NaN, Inf, subnormal and extreme
values). A case passes when the call

* raises ``ValueError`` / ``TypeError`` naming one of the function's
  arguments, or ``RuntimeError`` / ``NotImplementedError`` with a message; or
* returns a tensor of the expected shape and dtype that is free of NaN
  whenever every input was finite and valid, and, for well-conditioned
  float64 circular solves, equal to :mod:`deconv_ext.reference`.

Prints one JSON line per failing case (its description and what went wrong)
and exits with status 1 if there was any.
"""
from __future__ import annotations

import json
import math
import random
import sys
import warnings

import torch

import deconv_ext as dx
from deconv_ext import reference

NAN, INF = float("nan"), float("inf")
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class Case:
    """One call: its description (for the report) and whether all inputs are finite and valid."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.desc = {}
        self.clean = True  # every input valid and finite: no NaN may come out
        # Half the cases draw only valid values (else few calls would get past
        # the argument checks), half draw from everything.
        self.friendly = rng.random() < 0.5

    def pick(self, name, options, weights=None):
        weights = list(weights or [1] * len(options))
        if self.friendly:
            weights = [w if opt[2] else 0 for w, opt in zip(weights, options)]
        i = self.rng.choices(range(len(options)), weights=weights)[0]
        label, value, clean = options[i]
        self.desc[name] = label
        self.clean &= clean
        return value


def _tensor(case: Case, name: str, shape, dtype, invertible=False):
    """A tensor of ``shape`` with finite, special or extreme values in some layout."""
    rng = case.rng
    gen = torch.Generator().manual_seed(rng.randrange(1 << 30))
    if dtype in FLOATS:
        t = torch.rand(shape, generator=gen, dtype=torch.float64)
        if invertible and len(shape) >= 2 and min(shape[-2:]) > 0:
            t = t * (0.5 / max(shape[-2] * shape[-1] - 1, 1))
            t[..., shape[-2] // 2, shape[-1] // 2] = 1.0
        t = t.to(dtype)
    elif dtype.is_complex:
        t = torch.randn(shape, generator=gen, dtype=dtype)
    elif dtype == torch.bool:
        t = torch.ones(shape, dtype=dtype)
    else:
        t = torch.randint(0, 5, shape, generator=gen, dtype=dtype)
    if dtype not in FLOATS:
        case.clean = False
    special = case.pick(f"{name}.values", [
        ("rand", None, True), ("nan", NAN, False), ("inf", INF, False), ("-inf", -INF, False),
        ("x1e-30", 1e-30, True), ("x1e30", 1e30, True), ("zeros", 0.0, True)],
        weights=[10, 1, 1, 1, 1, 1, 1])
    if special is not None and t.numel() and dtype in FLOATS:
        if special in (1e-30, 1e30):
            t = t * special
            if dtype != torch.float64:
                case.clean = False  # out of range in float16/bfloat16, near it in float32
        elif special == 0.0:
            t = torch.zeros_like(t)
        else:
            t.view(-1)[rng.randrange(t.numel())] = special
    layout = case.pick(f"{name}.layout", [
        ("strided", "strided", True), ("transposed", "t", True), ("neg_view", "neg", True),
        ("sparse_coo", "coo", False)], weights=[10, 2, 1, 1])
    if layout == "t" and t.dim() >= 2:
        t = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif layout == "neg" and dtype in FLOATS:
        t = torch._neg_view(-t)
    elif layout == "coo":
        t = t.to_sparse()
    return t


def _image(case: Case, min_dims=2):
    dims = case.pick("image.dims", [(str(d), d, d >= min_dims) for d in (1, 2, 3, 4)],
                     weights=[1, 6, 3, 2])
    side = [0, 1, 2, 3, 5, 8, 9, 12]
    shape = [case.rng.choice([1, 2, 3]) for _ in range(max(dims - 2, 0))]
    shape += [case.rng.choice(side) for _ in range(min(dims, 2))]
    dtype = case.pick("image.dtype", [(str(d), d, d in FLOATS) for d in
                                      FLOATS + (torch.int64, torch.complex64, torch.bool)],
                      weights=[2, 1, 4, 6, 1, 1, 1])
    case.desc["image.shape"] = shape
    return _tensor(case, "image", shape, dtype)


def _psf(case: Case, image, name="psf"):
    kh = case.rng.choice([0, 1, 2, 3, 4, 6, 13])
    kw = case.rng.choice([0, 1, 2, 3, 5, 13])
    if case.friendly and image.dim() >= 2:  # a PSF that fits the image
        H, W = image.shape[-2:]
        kh = case.rng.randint(1, max(1, min(H, 6)))
        kw = case.rng.randint(1, max(1, min(W, 6)))
    lead = case.pick(f"{name}.lead", [("none", [], True), ("per-plane", None, True),
                                      ("mismatch", [7], False)], weights=[6, 2, 1])
    if lead is None:
        lead = list(image.shape[:-2]) if image.dim() > 2 else []
    shape = lead + [kh, kw]
    case.desc[f"{name}.shape"] = shape
    if image.dim() >= 2 and (kh > image.shape[-2] or kw > image.shape[-1] or 0 in (kh, kw)):
        if min(image.shape[-2:]) > 0 or 0 in (kh, kw):
            case.clean = False
    dtype = case.pick(f"{name}.dtype", [(str(d), d, d in FLOATS) for d in
                                        (torch.float32, torch.float64, torch.float16,
                                         torch.int32, torch.complex128)],
                      weights=[4, 6, 1, 1, 1])
    return _tensor(case, name, shape, dtype,
                   invertible=case.rng.random() < (0.8 if case.friendly else 0.3))


def _eps(case: Case, image):
    size = tuple(image.shape[-2:]) if image.dim() >= 2 else (1, 1)
    gen = torch.Generator().manual_seed(case.rng.randrange(1 << 30))
    e = torch.rand(size, generator=gen, dtype=torch.float64) * 1e-2
    bad = e.clone()
    if bad.numel():
        bad.view(-1)[0] = NAN
    return case.pick("eps", [
        ("1e-2", 1e-2, True), ("0", 0.0, True), ("1", 1.0, True), ("1e-45", 1e-45, True),
        ("1e-310", 1e-310, True), ("1e12", 1e12, True), ("-1", -1.0, False),
        ("nan", NAN, False), ("inf", INF, False), ("True", True, False), ("str", "a", False),
        ("None", None, False), ("tensor", e, True), ("tensor-nan", bad, False),
        ("tensor-wrong-shape", torch.rand(3, 2, 2, 5), False), ("tensor-int", e.long(), False)],
        weights=[8, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1])


def _common(case: Case):
    kw = {}
    kw["method"] = case.pick("method", [("tikhonov", "tikhonov", True), ("pinv", "pinv", True),
                                        ("bad", "inverse", False)], weights=[6, 3, 1])
    kw["boundary"] = case.pick("boundary", [(b, b, True) for b in
                                            ("circular", "reflect", "symmetric", "replicate",
                                             "zeros")] + [("mirror", "mirror", False)],
                               weights=[6, 2, 2, 1, 1, 1])
    kw["rcond"] = case.pick("rcond", [("None", None, True), ("0.1", 0.1, True),
                                      ("1", 1.0, False), ("nan", NAN, False)],
                            weights=[8, 1, 1, 1])
    reg = case.pick("reg", [("None", None, True), ("laplacian", "laplacian", True),
                            ("kernel", "kernel", True), ("nan-kernel", "nan", False),
                            ("str", "tv", False)], weights=[8, 2, 1, 1, 1])
    if reg in ("kernel", "nan"):
        r = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])
        if reg == "nan":
            r[1, 1] = NAN
        reg = r
    kw["reg"] = reg
    return kw


def case_deconvolve(case: Case):
    image = _image(case)
    psf = _psf(case, image)
    kw = _common(case)
    kw["eps"] = _eps(case, image)
    kw["solver"] = case.pick("solver", [("fft", "fft", True), ("cg", "cg", True),
                                        ("dct", "dct", True), ("lsqr", "lsqr", False)],
                             weights=[8, 2, 1, 1])
    if kw["solver"] == "cg":
        kw["max_iter"] = 30
    kw["taper"] = case.pick("taper", [("None", None, True), ("3", 3, True), ("-1", -1, False),
                                      ("1e13", 10 ** 13, False)], weights=[10, 1, 1, 1])
    if isinstance(kw["reg"], torch.Tensor) and isinstance(image, torch.Tensor):
        kw["reg"] = kw["reg"].to(psf.dtype) if psf.dtype in FLOATS else kw["reg"]
    return (lambda: dx.deconvolve(image, psf, **kw)), image, (image, psf, kw)


def case_convolve(case: Case):
    image = _image(case)
    psf = _psf(case, image)
    boundary = _common(case)["boundary"]
    return (lambda: dx.convolve(image, psf, boundary)), image, (image, psf, {})


def case_plan(case: Case):
    image = _image(case)
    psf = _psf(case, image)
    kw = _common(case)
    kw["eps"] = _eps(case, image)
    size = case.pick("image_size", [("image's", None, True), ("absurd", (10 ** 14, 8), False),
                                    ("zero", (0, 4), False), ("float", (8.5, 8), False)],
                     weights=[10, 1, 1, 1])
    if size is None:
        size = tuple(image.shape[-2:]) if image.dim() >= 2 else (1,)
    how = case.pick("plan.call", [("solve", "solve", True), ("blur", "blur", True),
                                  ("adjoint", "adjoint", True)])

    def run():
        plan = dx.DeconvPlan(psf, size, **kw)
        return getattr(plan, {"solve": "__call__"}.get(how, how))(image)

    return run, image, (image, psf, kw)


def case_layer(case: Case):
    rng = case.rng
    c_in, c_out = rng.choice([1, 2, 3]), rng.choice([1, 2, 4])
    groups = case.pick("groups", [("1", 1, True), ("c_out", c_out, c_in == c_out),
                                  ("0", 0, False), ("1.5", 1.5, False)], weights=[6, 2, 1, 1])
    if groups == c_out and c_in != c_out:
        case.clean = False
    cin_g = c_in // groups if isinstance(groups, int) and groups > 0 and c_in % groups == 0 else 1
    kh, kw_ = rng.choice([1, 2, 3]), rng.choice([1, 3])
    weight = _tensor(case, "weight", [c_out, cin_g, kh, kw_], rng.choice(
        [torch.float32, torch.float64]))
    H, W = rng.choice([0, 3, 6, 8]), rng.choice([0, 4, 7])
    out_dtype = rng.choice([torch.float32, torch.float64])
    output = _tensor(case, "output", [rng.choice([1, 2]), c_out, H, W], out_dtype)
    case.desc["output.shape"] = list(output.shape)
    kw = dict(groups=groups, eps=case.pick("eps", [("0", 0.0, True), ("1e-2", 1e-2, True),
                                                   ("-1", -1.0, False), ("nan", NAN, False)],
                                           weights=[4, 4, 1, 1]))
    kw["padding"] = case.pick("padding", [("same", "same", True), ("valid", "valid", True),
                                          ("full", "full", False)], weights=[6, 2, 1])
    kw["padding_mode"] = case.pick("padding_mode", [(m, m, True) for m in
                                                    ("circular", "zeros", "reflect",
                                                     "replicate")] + [("x", "x", False)],
                                   weights=[6, 1, 1, 1, 1])
    kw["dilation"] = case.pick("dilation", [("1", 1, True), ("2", 2, True), ("0", 0, False)],
                               weights=[6, 2, 1])
    if kw["padding"] == "valid" or kw["padding_mode"] != "circular":
        kw["max_iter"] = 30
    what = case.pick("layer.fn", [("conv2d_pinv", "pinv", True), ("svdvals", "svd", True)],
                     weights=[3, 1])
    if what == "svd":
        size = (H, W)
        return ((lambda: dx.conv2d_svdvals(weight, size, groups=groups,
                                           dilation=kw["dilation"])), None, (weight,))
    return (lambda: dx.conv2d_pinv(output, weight, **kw)), output, (output, weight, kw)


def case_psf_maker(case: Case):
    name = case.pick("maker", [(n, n, True) for n in ("gaussian", "box", "motion", "disk")])
    value = case.pick("param", [("2", 2.0, True), ("0.5", 0.5, True), ("0", 0.0, False),
                                ("-1", -1.0, False), ("nan", NAN, False), ("inf", INF, False),
                                ("1e308", 1e308, False), ("1e12", 1e12, False)],
                      weights=[4, 2, 1, 1, 1, 1, 1, 1])
    fn = {"gaussian": lambda: dx.gaussian(value), "box": lambda: dx.box(int(value)
                                                                        if math.isfinite(value)
                                                                        and abs(value) < 1e6
                                                                        else value),
          "motion": lambda: dx.motion(value, 30.0), "disk": lambda: dx.disk(value)}[name]
    return fn, None, ()


CASES = [case_deconvolve, case_convolve, case_plan, case_layer, case_psf_maker]
ARG_NAMES = ("image", "psf", "eps", "method", "reg", "boundary", "rcond", "solver", "tol",
             "max_iter", "taper", "precond", "image_size", "output", "weight", "bias", "groups",
             "dilation", "padding", "input_size", "sigma", "size", "length", "radius", "angle",
             "x", "y")


def _finite_inputs(args) -> bool:
    for a in args:
        vals = a.values() if isinstance(a, dict) else [a]
        for v in vals:
            if isinstance(v, torch.Tensor):
                t = v.to_dense() if v.layout != torch.strided else v
                if t.is_floating_point() and not bool(torch.isfinite(t.resolve_neg()).all()):
                    return False
    return True


def check(case: Case, fn, like, args):
    """(None if the case passed, else what went wrong; the kind of outcome)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn()
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        if not any(n in msg for n in ARG_NAMES):
            return f"{type(exc).__name__} names no argument: {msg}", "refused"
        return None, "refused"
    except (RuntimeError, NotImplementedError) as exc:
        if not str(exc).strip():
            return f"{type(exc).__name__} without a message", "error"
        if case.clean and like is not None and not isinstance(exc, NotImplementedError):
            return f"valid input failed inside: {type(exc).__name__}: {str(exc)[:300]}", "error"
        return None, type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - anything else is a failure to report
        return f"unexpected {type(exc).__name__}: {str(exc)[:300]}", "error"
    if like is None:
        problem = None if isinstance(out, torch.Tensor) else f"returned {type(out).__name__}"
        return problem, "result"
    if isinstance(out, tuple):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        return f"returned {type(out).__name__}", "result"
    if out.dtype != like.dtype:
        return f"dtype {out.dtype} for an input of {like.dtype}", "result"
    if case.clean and _finite_inputs(args) and out.is_floating_point() and out.numel():
        if bool(torch.isnan(out).any()):
            return "NaN from finite valid input", "result"
        return None, "clean result"
    return None, "result"


def oracle(case: Case, fn, image, args):
    """Well-conditioned float32/float64 circular solves equal the float64 reference."""
    _, psf, kw = args
    real = (torch.float32, torch.float64)
    if not (image.dtype in real and psf.dtype in real and image.dim() >= 2
            and min(image.shape[-2:]) > 0 and kw.get("boundary") == "circular"
            and kw.get("solver", "fft") == "fft" and not kw.get("taper")
            and case.desc.get("image.values") == "rand" and case.desc.get("psf.values") == "rand"):
        return None
    psf_d = psf.resolve_neg().double()
    K = torch.fft.rfft2(psf_d, s=tuple(image.shape[-2:]))
    if float(K.abs().min()) < 0.3 * float(K.abs().max()):
        return None  # ill-conditioned: the pseudo-inverse threshold decides borderline frequencies
    ORACLE_CALLS[0] += 1
    ref = {k: v for k, v in kw.items() if k not in ("solver", "taper", "boundary", "max_iter")}
    for name in ("eps", "reg"):
        if isinstance(ref.get(name), torch.Tensor):
            ref[name] = ref[name].double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = fn()
        want = reference.deconvolve(image.resolve_neg().double(), psf_d, **ref)
    err = float((got.double() - want).norm() / want.norm().clamp_min(1e-300))
    tol = 1e-9 if image.dtype == psf.dtype == torch.float64 else 2e-5
    return None if err <= tol else f"differs from the reference by {err:.3g}"


ORACLE_CALLS = [0]


def main(seed: int, n: int) -> int:
    torch.set_num_threads(1)
    rng = random.Random(seed)
    failures = 0
    outcomes = {}
    for i in range(n):
        case = Case(random.Random(rng.randrange(1 << 30)))
        maker = case.rng.choice(CASES)
        case.desc["case"] = maker.__name__
        fn, like, args = maker(case)
        problem, outcome = check(case, fn, like, args)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if problem is None and outcome == "clean result" and maker is case_deconvolve:
            problem = oracle(case, fn, like, args)
        if problem is not None:
            failures += 1
            print(json.dumps({"i": i, "problem": problem, **{k: str(v) for k, v in
                                                            case.desc.items()}}), flush=True)
    print(f"{n} cases, {failures} failures; outcomes {outcomes}; {ORACLE_CALLS[0]} compared "
          f"with the reference", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
