// The DCT-II-diagonal solve of the symmetric-boundary blur (see dct.cpp).
#pragma once
#include <ATen/ATen.h>

namespace deconv_ext {

// x = C^T diag(filter) C image with C the orthonormal 2D DCT-II over the last
// two dims (scipy.fft.idctn(filter * dctn(image, norm="ortho"), norm="ortho")).
// image: float32/float64 (..., H, W); filter: real (H, W), same dtype.
// Returns (..., H, W).
at::Tensor dct_solve(const at::Tensor& image, const at::Tensor& filter);

}  // namespace deconv_ext
