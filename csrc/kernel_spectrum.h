// Kernel transfer functions and spectral power as ops (see kernel_spectrum.cpp).
#pragma once
#include <ATen/ATen.h>

namespace deconv_ext {

// rfft2 of psf (..., kh, kw) zero-padded to (height, width) and rolled so that
// its origin (kh/2, kw/2) sits at (0, 0): complex (..., height, width/2+1).
at::Tensor kernel_spectrum(const at::Tensor& psf, int64_t height, int64_t width);

// Adjoint of kernel_spectrum (its gradient w.r.t. psf): real (..., kh, kw).
at::Tensor kernel_spectrum_backward(const at::Tensor& grad, int64_t kh, int64_t kw,
                                    int64_t height, int64_t width);

// |k|^2, real, same shape.
at::Tensor spectral_power(const at::Tensor& k);

// Gradient of spectral_power: 2 grad k.
at::Tensor spectral_power_backward(const at::Tensor& grad, const at::Tensor& k);

}  // namespace deconv_ext
