// Fused pad / crop kernels (see pad_crop.cpp).
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace deconv_ext {

// float16/bfloat16 are computed in float32.
at::ScalarType compute_dtype(at::ScalarType t);

// Extends x (..., h, w) to (..., height, width) with x's pixel (0, 0) at
// (top, left) and the rest filled by `mode` ("zeros", "reflect",
// "symmetric", "replicate", "circular"); returns the compute dtype.
at::Tensor pad(const at::Tensor& x, int64_t top, int64_t left, int64_t height, int64_t width,
               c10::string_view mode);

// Adjoint of pad: grad (..., H, W) -> (..., height, width) of the input.
at::Tensor pad_backward(const at::Tensor& grad, int64_t top, int64_t left, int64_t height,
                        int64_t width, c10::string_view mode);

// x[..., top:top+height, left:left+width] cast to dtype, contiguous.
at::Tensor crop(const at::Tensor& x, int64_t top, int64_t left, int64_t height, int64_t width,
                at::ScalarType dtype);

}  // namespace deconv_ext
