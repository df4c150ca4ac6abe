// The 2D real FFTs of the pipelines (see fft.cpp for why they are not
// simply at::fft_rfft2 / at::fft_irfft2).
#pragma once
#include <ATen/ATen.h>

namespace deconv_ext {

// True when the pipelines call MKL's DFTI directly: the extension was built
// with MKL's header and the torch it runs in ships MKL.
bool mkl_dfti_enabled();

// Whether the pipelines may call MKL's DFTI (default true; false: torch.fft).
void set_mkl_dfti(bool enabled);

// rfft2 of a real float32/float64 x (..., H, W): the half spectrum
// (..., H, W/2+1), unnormalised, in a new contiguous tensor.
at::Tensor rfft2(const at::Tensor& x);

// irfft2 (norm "backward") of a half spectrum X (..., H, W/2+1) that the
// caller owns (X may be overwritten), written into out: contiguous, real,
// (..., H, W) with the same leading dims.
void irfft2_into(at::Tensor X, at::Tensor& out);

}  // namespace deconv_ext
