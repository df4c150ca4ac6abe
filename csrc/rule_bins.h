// Binned power of a spectrum, for choosing eps by a rule (see rule_bins.cpp).
#pragma once
#include <ATen/ATen.h>

namespace deconv_ext {

// out[p, b] = sum of weights[f] * |Y[p, f]|^2 over the frequencies f of plane
// p with idx[f] == b, accumulated in float64.
//   Y:       complex64/complex128 (..., H, Wf), any strides
//   idx:     int64 (H, Wf), each entry in [0, nbins)
//   weights: float64 (Wf,) or (H, Wf)
// Returns float64 (..., nbins).
at::Tensor bin_power(const at::Tensor& Y, const at::Tensor& idx, const at::Tensor& weights,
                     int64_t nbins);

}  // namespace deconv_ext
