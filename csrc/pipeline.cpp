// Real-to-real pipelines: rfft2 -> fused per-frequency kernel -> irfft2, each
// as ONE op.
//
// Why ops and not torch code around the spectral ops: the only tensors that
// cross op boundaries are then real images and the (constant) kernel
// spectrum. With torch 2.13, Inductor re-ordered an in-place rewrite of the
// irfft2 backward's half-spectrum scatter after our ops read the buffer (the
// second and later compiles in a process gave gradients off by O(1)); with
// the FFTs inside the op there is no complex buffer for it to rewrite.
#include "pipeline.h"

#include "spectral.h"

namespace deconv_ext {
namespace {

void check_real_image(const at::Tensor& x, const char* name, const at::Tensor& k) {
  TORCH_CHECK(x.dim() >= 2, name, " must have at least 2 dims, got ", x.dim());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(k.scalar_type() == c10::toComplexType(x.scalar_type()), "k must be ",
              c10::toComplexType(x.scalar_type()), " for a ", x.scalar_type(), " ", name,
              ", got ", k.scalar_type());
  TORCH_CHECK(k.dim() >= 2 && k.size(-2) == x.size(-2) && k.size(-1) == x.size(-1) / 2 + 1,
              "k of shape ", k.sizes(), " is not the half spectrum of a ", x.size(-2), "x",
              x.size(-1), " image");
}

at::Tensor irfft2_like(const at::Tensor& X, const at::Tensor& like) {
  return at::fft_irfft2(X, at::IntArrayRef({like.size(-2), like.size(-1)}));
}

// Gradient of irfft2 (norm "backward") w.r.t. its half-spectrum input: the
// rfft2 of the gradient divided by H*W, with the columns that stand for two
// full-spectrum bins (1 .. ceil(W/2) - 1) doubled.
at::Tensor irfft2_backward(const at::Tensor& grad) {
  const int64_t h = grad.size(-2), w = grad.size(-1);
  at::Tensor G = at::fft_rfft2(grad).div_(static_cast<double>(h * w));
  const int64_t twice = (w + 1) / 2 - 1;
  if (twice > 0) G.narrow(-1, 1, twice).mul_(2);
  return G;
}

}  // namespace

at::Tensor deconv2d(const at::Tensor& image, const at::Tensor& k,
                    const c10::optional<at::Tensor>& reg, double eps, const at::Tensor& thresh,
                    bool adjoint) {
  check_real_image(image, "image", k);
  if (image.numel() == 0) return at::empty_like(image);
  at::Tensor Y = at::fft_rfft2(image);
  if (adjoint) {
    Y = spectral_solve_adjoint(Y, k, reg, eps, thresh);
  } else {
    spectral_solve_(Y, k, reg, eps, thresh);  // Y is ours: solve in place
  }
  return irfft2_like(Y, image);
}

std::tuple<at::Tensor, at::Tensor> deconv2d_grad_k(const at::Tensor& grad, const at::Tensor& image,
                                                   const at::Tensor& k,
                                                   const c10::optional<at::Tensor>& reg,
                                                   double eps, const at::Tensor& thresh,
                                                   bool adjoint) {
  check_real_image(image, "image", k);
  TORCH_CHECK(grad.sizes() == image.sizes(), "grad shape ", grad.sizes(), " != image shape ",
              image.sizes());
  const at::Tensor G = irfft2_backward(grad), Y = at::fft_rfft2(image);
  if (!adjoint) return spectral_solve_backward(G, Y, k, reg, eps, thresh);
  // The adjoint solve is the solve with conj(K); the chain rule through the
  // conjugate conjugates the kernel's gradient.
  auto [gk, greg] = spectral_solve_backward(G, Y, k.conj().resolve_conj(), reg, eps, thresh);
  return {gk.conj().resolve_conj(), greg};
}

at::Tensor filter2d(const at::Tensor& x, const at::Tensor& k, bool conj) {
  check_real_image(x, "x", k);
  if (x.numel() == 0) return at::empty_like(x);
  return irfft2_like(spectral_mul(at::fft_rfft2(x), k, conj), x);
}

at::Tensor filter2d_grad_k(const at::Tensor& grad, const at::Tensor& x, at::IntArrayRef k_shape,
                           bool conj) {
  TORCH_CHECK(grad.sizes() == x.sizes(), "grad shape ", grad.sizes(), " != x shape ", x.sizes());
  return spectral_mul_grad_k(irfft2_backward(grad), at::fft_rfft2(x), k_shape, conj);
}

}  // namespace deconv_ext
