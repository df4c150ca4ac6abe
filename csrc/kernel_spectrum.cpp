// Kernel transfer functions as ops.
//
// Computing a kernel's spectrum (pad, roll, rfft2) and |K|^2 inside opaque ops
// keeps every complex-valued intermediate out of Inductor-generated code: with
// torch 2.13, Inductor miscompiled the backward of these steps when they were
// traced as plain torch code (gradients w.r.t. the PSF off by O(1)), while the
// same graph ran correctly under aot_eager. Inside an op, ATen runs them.
#include "kernel_spectrum.h"

namespace deconv_ext {

at::Tensor kernel_spectrum(const at::Tensor& psf, int64_t height, int64_t width) {
  TORCH_CHECK(psf.dim() >= 2, "psf must have at least 2 dims, got ", psf.dim());
  TORCH_CHECK(psf.scalar_type() == at::kFloat || psf.scalar_type() == at::kDouble,
              "psf must be float32 or float64, got ", psf.scalar_type());
  const int64_t kh = psf.size(-2), kw = psf.size(-1);
  TORCH_CHECK(kh <= height && kw <= width, "psf of size ", kh, "x", kw,
              " is larger than the spectrum's image size ", height, "x", width);
  at::Tensor padded = at::constant_pad_nd(psf, {0, width - kw, 0, height - kh}, 0);
  at::Tensor rolled = at::roll(padded, {-(kh / 2), -(kw / 2)}, {-2, -1});
  return at::fft_rfft2(rolled).contiguous();
}

at::Tensor kernel_spectrum_backward(const at::Tensor& grad, int64_t kh, int64_t kw,
                                    int64_t height, int64_t width) {
  TORCH_CHECK(grad.is_complex(), "grad must be complex, got ", grad.scalar_type());
  TORCH_CHECK(grad.size(-2) == height && grad.size(-1) == width / 2 + 1, "grad of shape ",
              grad.sizes(), " is not the half spectrum of ", height, "x", width);
  // Adjoint of rfft2 (unnormalised, one-sided) w.r.t. a real input: embed the
  // half spectrum in a zero full spectrum and take the real part of the
  // unnormalised inverse DFT (PyTorch's _fft_r2c backward).
  std::vector<int64_t> full_shape(grad.sizes().begin(), grad.sizes().end());
  full_shape.back() = width;
  at::Tensor full = at::zeros(full_shape, grad.options());
  full.narrow(-1, 0, grad.size(-1)).copy_(grad.resolve_conj());
  at::Tensor h = at::real(at::fft_ifft2(full, c10::nullopt, {-2, -1}, "forward"));
  // Undo the roll, then the zero padding.
  at::Tensor unrolled = at::roll(h, {kh / 2, kw / 2}, {-2, -1});
  return unrolled.narrow(-2, 0, kh).narrow(-1, 0, kw).contiguous();
}

at::Tensor spectral_power(const at::Tensor& k) {
  TORCH_CHECK(k.is_complex(), "k must be complex, got ", k.scalar_type());
  return at::view_as_real(k.resolve_conj()).square().sum(-1);
}

at::Tensor spectral_power_backward(const at::Tensor& grad, const at::Tensor& k) {
  TORCH_CHECK(k.is_complex(), "k must be complex, got ", k.scalar_type());
  return (k.resolve_conj() * (2 * grad)).contiguous();
}

}  // namespace deconv_ext
