"""A small cache of plans for repeated one-shot calls with the same small PSF or layer.

``deconvolve(image, psf)`` builds a plan (the PSF's spectrum at the image
size: an FFT as large as the image) on every call. A pipeline that deblurs
frame after frame with the same PSF would pay that each time; so plans are
kept, keyed by the PSF's *content* (its bytes, not its identity: a tensor
refilled in place gives a new key), shape, dtype and device, and by every
other argument. Hashing a GPU tensor's bytes would copy it to the host (a
sync per call), so there the key is the tensor object itself and its
version counter instead: the same PSF tensor, unchanged, hits; a tensor
changed in place, or a new one with equal values, builds a new plan. Only
eager calls with small float PSFs and scalar hyper-parameters are cached:
under autograd or ``torch.compile`` the plan must be built in the graph. At most ``MAX_PLANS`` plans and ``MAX_BYTES`` of
spectra are kept (least recently used first out); a plan larger than a
quarter of that is never kept, so a huge image's spectrum is freed after
its call.
"""
from __future__ import annotations

import hashlib
import itertools
import threading
import weakref
from collections import OrderedDict
from typing import Callable, Hashable, Optional

import torch

__all__ = ["cached_plan", "clear", "MAX_PLANS", "MAX_PSF_ELEMENTS"]

MAX_PLANS = 16
MAX_BYTES = 256 << 20  # spectra kept alive between calls, all plans together
MAX_PSF_ELEMENTS = 1 << 16  # hashing a larger PSF costs more than it saves

_lock = threading.Lock()
_plans: "OrderedDict[Hashable, object]" = OrderedDict()
_digests: dict = {}  # id(tensor) -> (weak reference, version, digest)
_sizes: dict = {}
_tokens = itertools.count()  # identities of device tensors, never reused


def clear() -> None:
    """Forget every cached plan."""
    with _lock:
        _plans.clear()
        _sizes.clear()


def _digest(t: torch.Tensor) -> str:
    """A key for the tensor's content, remembered per tensor object and version.

    ``Tensor._version`` grows with every in-place change, so a tensor refilled
    in place gets a new key; a PSF reused call after call is hashed once. A
    CPU tensor's key is a hash of its bytes; a device tensor's is a token
    drawn once per tensor object (the same object and version: the same
    content) — no copy to the host.
    """
    memo = _digests.get(id(t))
    if memo is not None and memo[0]() is t and memo[1] == t._version:
        return memo[2]
    if t.device.type == "cpu":
        # A lazily negated view (torch._neg_view) cannot be reinterpreted as
        # bytes: resolve_neg materialises it (and is free for any other tensor).
        raw = t.detach().resolve_neg().contiguous().reshape(-1).view(torch.uint8)  # any dtype
        digest = hashlib.blake2b(memoryview(raw.numpy()), digest_size=16).hexdigest()
    else:
        digest = f"object-{next(_tokens)}-version-{t._version}"
    if len(_digests) >= 4 * MAX_PLANS:
        _digests.clear()
    # A weak reference: an id can be reused once its tensor is freed.
    _digests[id(t)] = (weakref.ref(t), t._version, digest)
    return digest


def _cacheable(t: torch.Tensor) -> bool:
    return t.device.type != "meta" and not t.requires_grad and t.numel() <= MAX_PSF_ELEMENTS


def _key(psf: torch.Tensor, extra: tuple) -> Optional[Hashable]:
    # Plans made under inference_mode hold inference tensors, which a later
    # call under autograd could not save for backward: never keep them.
    if (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.is_inference_mode_enabled()
            or not _cacheable(psf)):
        return None
    parts = []
    for v in extra:
        if isinstance(v, torch.Tensor):
            if v.dim() > 1 or not _cacheable(v):
                return None  # tensor eps / reg: not worth hashing, may carry gradients
            v = (_digest(v), tuple(v.shape), v.dtype)  # a small vector, e.g. a layer's bias
        parts.append(v)
    return (_digest(psf), tuple(psf.shape), psf.dtype, psf.device) + tuple(parts)


def cached_plan(psf: torch.Tensor, extra: tuple, build: Callable[[], object]):
    """The plan for ``(psf, *extra)``: from the cache when possible, else ``build()``."""
    key = _key(psf, extra)
    if key is None:
        return build()
    with _lock:
        plan = _plans.get(key)
        if plan is not None:
            _plans.move_to_end(key)
            return plan
    plan = build()  # outside the lock: builds of different PSFs run concurrently
    size = _nbytes(plan)
    if size > MAX_BYTES // 4:
        return plan  # a huge image's spectrum is not kept alive after the call
    with _lock:
        _plans[key] = plan
        _sizes[key] = size
        while len(_plans) > MAX_PLANS or sum(_sizes.values()) > MAX_BYTES:
            old, _ = _plans.popitem(last=False)
            _sizes.pop(old, None)
    return plan


def _nbytes(plan) -> int:
    """Bytes of the tensors and arrays a plan holds (its spectra, filters)."""
    total = 0
    seen = set()
    for v in vars(plan).values():
        if id(v) in seen:
            continue  # one tensor held under two names (a plan's solve spectrum) counts once
        seen.add(id(v))
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif hasattr(v, "nbytes") and not isinstance(v, (bytes, str)):
            total += int(v.nbytes)
    return total
