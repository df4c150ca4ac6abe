// Whole real-to-real spectral pipelines as ops (see pipeline.cpp).
#pragma once
#include <ATen/ATen.h>

namespace deconv_ext {

// irfft2(solve(rfft2(image))): image real (..., H, W), k broadcastable to the
// half spectrum; returns (..., H, W). adjoint=true applies the adjoint solve.
at::Tensor deconv2d(const at::Tensor& image, const at::Tensor& k,
                    const c10::optional<at::Tensor>& reg, double eps, const at::Tensor& thresh,
                    bool adjoint);

// crop(deconv2d(pad(image))) in one pass per chunk, with one buffer for the
// padded image and the padded solution: the fast padded solve of eager CPU
// calls without autograd (the ops compose it otherwise). The image (..., h, w)
// sits at (top, left) of a (height, width) buffer extended by `mode` (as
// pad); k is the half spectrum at (height, width). Returns the image's shape
// and dtype.
at::Tensor padded_deconv2d(const at::Tensor& image, int64_t top, int64_t left, int64_t height,
                           int64_t width, c10::string_view mode, const at::Tensor& k,
                           const c10::optional<at::Tensor>& reg, double eps,
                           const at::Tensor& thresh);

// Gradients of deconv2d w.r.t. k and reg (as spectral_solve_backward).
std::tuple<at::Tensor, at::Tensor> deconv2d_grad_k(const at::Tensor& grad, const at::Tensor& image,
                                                   const at::Tensor& k,
                                                   const c10::optional<at::Tensor>& reg,
                                                   double eps, const at::Tensor& thresh,
                                                   bool adjoint);

// irfft2(K rfft2(x)) (conj=false: the blur) or irfft2(conj(K) rfft2(x)).
at::Tensor filter2d(const at::Tensor& x, const at::Tensor& k, bool conj);

// Gradient of filter2d w.r.t. k, summed to k_shape.
at::Tensor filter2d_grad_k(const at::Tensor& grad, const at::Tensor& x, at::IntArrayRef k_shape,
                           bool conj);

}  // namespace deconv_ext
