// Kernel transfer functions as ops.
//
// Computing a kernel's spectrum (pad, roll, rfft2) and |K|^2 inside opaque ops
// keeps every complex-valued intermediate out of Inductor-generated code: with
// torch 2.13, Inductor miscompiled the backward of these steps when they were
// traced as plain torch code (gradients w.r.t. the PSF off by O(1)), while the
// same graph ran correctly under aot_eager. Inside an op, ATen runs them.
#include "kernel_spectrum.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "alloc.h"
#include "checks.h"
#include "fft.h"

namespace deconv_ext {

at::Tensor kernel_spectrum(const at::Tensor& psf, int64_t height, int64_t width) {
  check_cpu_operands("kernel_spectrum", {operand("psf", psf)});
  TORCH_CHECK_VALUE(height > 0 && width > 0, "kernel_spectrum: height and width must be > 0, got ",
                    height, "x", width);
  TORCH_CHECK(psf.dim() >= 2, "psf must have at least 2 dims, got ", psf.dim());
  TORCH_CHECK(psf.scalar_type() == at::kFloat || psf.scalar_type() == at::kDouble,
              "psf must be float32 or float64, got ", psf.scalar_type());
  const int64_t kh = psf.size(-2), kw = psf.size(-1);
  TORCH_CHECK(kh <= height && kw <= width, "psf of size ", kh, "x", kw,
              " is larger than the spectrum's image size ", height, "x", width);
  // The zero-padded PSF rolled so that its origin (kh/2, kw/2) lands on
  // pixel (0, 0), written directly: four blocks into a zeroed buffer (the
  // pad-then-roll took two image-sized passes: 4096x4096, 93 ms with the FFT).
  std::vector<int64_t> shape(psf.sizes().begin(), psf.sizes().end());
  shape[shape.size() - 2] = height;
  shape[shape.size() - 1] = width;
  at::Tensor placed = empty_large(shape, psf.options()).zero_();
  const int64_t ch = kh / 2, cw = kw / 2;
  // (source start, destination start, length) along one axis: the origin's
  // side first, then the part that wraps around to the far edge.
  const int64_t rows[2][3] = {{ch, 0, kh - ch}, {0, height - ch, ch}};
  const int64_t cols[2][3] = {{cw, 0, kw - cw}, {0, width - cw, cw}};
  for (const auto& r : rows) {
    for (const auto& c : cols) {
      if (r[2] == 0 || c[2] == 0) continue;
      placed.narrow(-2, r[1], r[2]).narrow(-1, c[1], c[2])
          .copy_(psf.narrow(-2, r[0], r[2]).narrow(-1, c[0], c[2]));
    }
  }
  return rfft2(placed);
}

at::Tensor kernel_spectrum_backward(const at::Tensor& grad, int64_t kh, int64_t kw,
                                    int64_t height, int64_t width) {
  check_cpu_operands("kernel_spectrum_backward", {operand("grad", grad)});
  check_complex("kernel_spectrum_backward", operand("grad", grad));
  TORCH_CHECK_VALUE(grad.dim() >= 2, "kernel_spectrum_backward: grad must have at least 2 dims, "
                    "got ", grad.dim());
  TORCH_CHECK_VALUE(kh >= 0 && kw >= 0 && kh <= height && kw <= width,
                    "kernel_spectrum_backward: a ", kh, "x", kw, " psf does not fit a ", height,
                    "x", width, " image");
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
  check_cpu_operands("spectral_power", {operand("k", k)});
  TORCH_CHECK(k.scalar_type() == at::kComplexFloat || k.scalar_type() == at::kComplexDouble,
              "k must be complex64 or complex128, got ", k.scalar_type());
  // |k|^2 = re^2 + im^2 in one pass (square then sum over a view_as_real took
  // two, with a temporary twice the output's size). The conj bit does not
  // change it; a neg bit does not either.
  const at::Tensor kc = k.contiguous();
  at::Tensor out = empty_large(kc.sizes(), kc.options().dtype(c10::toRealValueType(kc.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "spectral_power", [&] {
    const auto* src = reinterpret_cast<const scalar_t*>(kc.const_data_ptr());
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, out.numel(), 1 << 14, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) dst[i] = src[2 * i] * src[2 * i] + src[2 * i + 1] * src[2 * i + 1];
    });
  });
  return out;
}

at::Tensor spectral_power_backward(const at::Tensor& grad, const at::Tensor& k) {
  check_cpu_operands("spectral_power_backward", {operand("grad", grad), operand("k", k)});
  check_complex("spectral_power_backward", operand("k", k));
  check_dtype("spectral_power_backward", operand("grad", grad),
              c10::toRealValueType(k.scalar_type()));
  TORCH_CHECK_VALUE(grad.sizes() == k.sizes(), "spectral_power_backward: grad of shape ",
                    grad.sizes(), " must match k of shape ", k.sizes());
  return (k.resolve_conj() * (2 * grad)).contiguous();
}

}  // namespace deconv_ext
