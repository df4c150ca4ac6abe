// Per-frequency channel mixing for multi-channel convolution layers (see
// channel_mix.cpp and deconv_ext/multichannel.py).
#pragma once
#include <ATen/ATen.h>

namespace deconv_ext {

// One small complex matrix per group and frequency applied to the channels of
// a half spectrum, for every batch element:
//   g:   complex (groups, M, N, H, Wf), "planar" like the spectra (the
//        frequency index is the fastest one, so the inner loops are unit-stride)
//   adjoint == false: y (..., groups*N, H, Wf) -> out (..., groups*M, H, Wf),
//        out[b, g*M+m, f] = sum_n g[g, m, n, f] * y[b, g*N+n, f]
//   adjoint == true:  y (..., groups*M, H, Wf) -> out (..., groups*N, H, Wf),
//        out[b, g*N+n, f] = sum_m conj(g[g, m, n, f]) * y[b, g*M+m, f]
// complex64 or complex128; lazy conjugate bits and strides are resolved first.
// Returns a new contiguous tensor.
at::Tensor channel_mix(const at::Tensor& y, const at::Tensor& g, bool adjoint);

// The reduction behind channel_mix's gradient w.r.t. g:
//   out[g, m, n, f] = sum_b a[b, g*M+m, f] * conj(c[b, g*N+n, f])
// with a (..., groups*M, H, Wf), c (..., groups*N, H, Wf) (same leading dims);
// returns (groups, M, N, H, Wf).
at::Tensor channel_mix_outer(const at::Tensor& a, const at::Tensor& c, int64_t groups);

}  // namespace deconv_ext
