// Per-frequency kernels of the spectral solve (see spectral.cpp).
#pragma once
#include <ATen/ATen.h>

namespace deconv_ext {

// X = conj(K) Y / (|K|^2 + eps*reg) where eps*reg > 0; elsewhere the
// pseudo-inverse Y / K where |K|^2 > thresh, else 0.
//   y:      complex (..., H, Wf), the observation's spectrum
//   k:      complex, broadcastable to y, the kernel's transfer function
//   reg:    optional real, broadcastable to y (|R|^2, or e(w)|R|^2); absent = 1
//   thresh: real, broadcastable to y, the threshold on |K|^2, (rcond*sigma_max)^2
// Returns a new contiguous tensor shaped like y.
at::Tensor spectral_solve(const at::Tensor& y, const at::Tensor& k,
                          const c10::optional<at::Tensor>& reg, double eps,
                          const at::Tensor& thresh);

// Adjoint of spectral_solve w.r.t. y: K Y / d (same mask).
at::Tensor spectral_solve_adjoint(const at::Tensor& y, const at::Tensor& k,
                                  const c10::optional<at::Tensor>& reg, double eps,
                                  const at::Tensor& thresh);

// In-place spectral_solve: overwrites y (a temporary spectrum the caller owns).
void spectral_solve_(at::Tensor& y, const at::Tensor& k, const c10::optional<at::Tensor>& reg,
                     double eps, const at::Tensor& thresh);

// K * Y (the forward blur) or conj(K) * Y (its adjoint); k broadcast to y.
at::Tensor spectral_mul(const at::Tensor& y, const at::Tensor& k, bool conj);

// Gradients of spectral_solve w.r.t. k (summed to k's shape) and w.r.t. reg
// (summed to reg's shape; a 0-dim dL/deps when reg is absent).
std::tuple<at::Tensor, at::Tensor> spectral_solve_backward(
    const at::Tensor& grad, const at::Tensor& y, const at::Tensor& k,
    const c10::optional<at::Tensor>& reg, double eps, const at::Tensor& thresh);

// Gradient of spectral_mul w.r.t. k, summed to k_shape.
at::Tensor spectral_mul_grad_k(const at::Tensor& grad, const at::Tensor& y,
                               at::IntArrayRef k_shape, bool conj);

}  // namespace deconv_ext
