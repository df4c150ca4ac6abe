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

#include "alloc.h"
#include "checks.h"
#include "fft.h"
#include "pad_crop.h"
#include "spectral.h"

namespace deconv_ext {
namespace {

void check_real_image(const char* op, const at::Tensor& x, const char* name, const at::Tensor& k) {
  check_cpu_operands(op, {operand(name, x), operand("k", k)});
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

// Gradient of irfft2 (norm "backward") w.r.t. its half-spectrum input: the
// rfft2 of the gradient divided by H*W, with the columns that stand for two
// full-spectrum bins (1 .. ceil(W/2) - 1) doubled.
at::Tensor irfft2_backward(const at::Tensor& grad) {
  const int64_t h = grad.size(-2), w = grad.size(-1);
  at::Tensor G = rfft2(grad).div_(static_cast<double>(h * w));
  const int64_t twice = (w + 1) / 2 - 1;
  if (twice > 0) G.narrow(-1, 1, twice).mul_(2);
  return G;
}

// Rows of dim 0 per chunk: at least one, else about kChunkElements elements.
// Solving a batch chunk by chunk bounds the FFT temporaries (torch's batched
// irfft2 holds two spectrum-sized buffers besides the output: 3x the input
// in all for a large batch) to a few MB. Not smaller: every chunk is a few
// multi-threaded calls, and with other thread pools busy on the 2 cores
// (scipy's, FFTW's) 2^18-element chunks took 3.5-3.6 ms at 8x3x256x256
// against 3.1 ms for 2^20.
constexpr int64_t kChunkElements = int64_t(1) << 20;

int64_t chunk_rows(const at::Tensor& x) {
  if (x.dim() < 3 || x.size(0) <= 1) return std::max<int64_t>(x.dim() < 3 ? 1 : x.size(0), 1);
  const int64_t per_row = x.numel() / x.size(0);
  return std::max<int64_t>(1, kChunkElements / std::max<int64_t>(per_row, 1));
}

// The slice of an operand broadcast against x along x's dim 0.
c10::optional<at::Tensor> rows_of(const c10::optional<at::Tensor>& t, const at::Tensor& x,
                                  int64_t start, int64_t len) {
  if (!t.has_value() || !t->defined()) return t;
  // Only a batch dim is sliced: a 2D image's dim 0 is its height.
  if (x.dim() >= 3 && t->dim() == x.dim() && t->size(0) == x.size(0) && x.size(0) > 1)
    return t->narrow(0, start, len);
  return t;
}

// fn(x[rows], start, len, out[rows]) chunk by chunk along dim 0: fn writes
// its chunk's result into out[rows] (the inverse FFT writes there directly,
// no copy: copying chunk results took 4% of a call at 8x3x256x256).
template <typename Fn>
at::Tensor by_chunks(const at::Tensor& x, Fn fn) {
  at::Tensor out = empty_large(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t step = chunk_rows(x);
  if (x.dim() < 3 || step >= x.size(0)) {
    fn(x, 0, x.dim() < 3 ? 1 : x.size(0), out);
    return out;
  }
  for (int64_t start = 0; start < x.size(0); start += step) {
    const int64_t len = std::min(step, x.size(0) - start);
    at::Tensor rows = out.narrow(0, start, len);  // contiguous: a slice of dim 0
    fn(x.narrow(0, start, len), start, len, rows);
  }
  return out;
}

// out = irfft2(solve(rfft2(x))) for the chunk [start, start + len) of
// `batch`'s dim 0, with the operands' rows of that chunk; out may be x.
void solve_chunk(const at::Tensor& x, const at::Tensor& batch, int64_t start, int64_t len,
                 const at::Tensor& k, const c10::optional<at::Tensor>& reg, double eps,
                 const at::Tensor& thresh, bool adjoint, at::Tensor& out) {
  const at::Tensor kc = *rows_of(k, batch, start, len);
  const auto rc = rows_of(reg, batch, start, len);
  const at::Tensor tc = *rows_of(thresh, batch, start, len);
  at::Tensor Y = rfft2(x);
  if (adjoint) {
    Y = spectral_solve_adjoint(Y, kc, rc, eps, tc);
  } else {
    spectral_solve_(Y, kc, rc, eps, tc);  // Y is ours: solve in place
  }
  irfft2_into(Y, out);
}

}  // namespace

at::Tensor deconv2d(const at::Tensor& image, const at::Tensor& k,
                    const c10::optional<at::Tensor>& reg, double eps, const at::Tensor& thresh,
                    bool adjoint) {
  check_real_image("deconv2d", image, "image", k);
  check_cpu_operands("deconv2d", {operand("reg", reg), operand("thresh", thresh)});
  check_eps("deconv2d", eps, image.scalar_type());
  if (image.numel() == 0) return at::empty_like(image);
  return by_chunks(image, [&](const at::Tensor& x, int64_t start, int64_t len, at::Tensor& out) {
    solve_chunk(x, image, start, len, k, reg, eps, thresh, adjoint, out);
  });
}

at::Tensor padded_deconv2d(const at::Tensor& image, int64_t top, int64_t left, int64_t height,
                           int64_t width, c10::string_view mode, const at::Tensor& k,
                           const c10::optional<at::Tensor>& reg, double eps,
                           const at::Tensor& thresh) {
  check_cpu_operands("padded_deconv2d", {operand("image", image), operand("k", k),
                                         operand("reg", reg), operand("thresh", thresh)});
  TORCH_CHECK(image.dim() >= 2, "image must have at least 2 dims, got ", image.dim());
  TORCH_CHECK_TYPE(at::isFloatingType(image.scalar_type()),
                   "padded_deconv2d: image must be a floating tensor, got ", image.scalar_type());
  const at::ScalarType real = compute_dtype(image.scalar_type());
  check_eps("padded_deconv2d", eps, real);
  TORCH_CHECK(k.scalar_type() == c10::toComplexType(real), "k must be ", c10::toComplexType(real),
              " for a ", image.scalar_type(), " image, got ", k.scalar_type());
  TORCH_CHECK(k.dim() >= 2 && k.size(-2) == height && k.size(-1) == width / 2 + 1, "k of shape ",
              k.sizes(), " is not the half spectrum of a ", height, "x", width, " buffer");
  TORCH_CHECK(top >= 0 && left >= 0 && top + image.size(-2) <= height &&
                  left + image.size(-1) <= width,
              "an image of ", image.size(-2), "x", image.size(-1), " at (", top, ", ", left,
              ") does not fit a ", height, "x", width, " buffer");
  if (image.numel() == 0) return at::empty_like(image);
  const int64_t h = image.size(-2), w = image.size(-1);
  return by_chunks(image, [&](const at::Tensor& x, int64_t start, int64_t len, at::Tensor& out) {
    // The padded buffer is the FFT's input and, once transformed, its output.
    at::Tensor buf = pad(x, top, left, height, width, mode);
    solve_chunk(buf, image, start, len, k, reg, eps, thresh, false, buf);
    out.copy_(buf.narrow(-2, top, h).narrow(-1, left, w));
  });
}

std::tuple<at::Tensor, at::Tensor> deconv2d_grad_k(const at::Tensor& grad, const at::Tensor& image,
                                                   const at::Tensor& k,
                                                   const c10::optional<at::Tensor>& reg,
                                                   double eps, const at::Tensor& thresh,
                                                   bool adjoint) {
  check_real_image("deconv2d_grad_k", image, "image", k);
  check_cpu_operands("deconv2d_grad_k", {operand("grad", grad), operand("reg", reg),
                                         operand("thresh", thresh)});
  TORCH_CHECK(grad.sizes() == image.sizes() && grad.scalar_type() == image.scalar_type(),
              "grad (", grad.scalar_type(), " ", grad.sizes(), ") must match image (",
              image.scalar_type(), " ", image.sizes(), ")");
  const at::Tensor G = irfft2_backward(grad), Y = rfft2(image);
  if (!adjoint) return spectral_solve_backward(G, Y, k, reg, eps, thresh);
  // The adjoint solve is the solve with conj(K); the chain rule through the
  // conjugate conjugates the kernel's gradient.
  auto [gk, greg] = spectral_solve_backward(G, Y, k.conj().resolve_conj(), reg, eps, thresh);
  return {gk.conj().resolve_conj(), greg};
}

at::Tensor filter2d(const at::Tensor& x, const at::Tensor& k, bool conj) {
  check_real_image("filter2d", x, "x", k);
  if (x.numel() == 0) return at::empty_like(x);
  return by_chunks(x, [&](const at::Tensor& xc, int64_t start, int64_t len, at::Tensor& out) {
    irfft2_into(spectral_mul(rfft2(xc), *rows_of(k, x, start, len), conj), out);
  });
}

at::Tensor filter2d_grad_k(const at::Tensor& grad, const at::Tensor& x, at::IntArrayRef k_shape,
                           bool conj) {
  check_cpu_operands("filter2d_grad_k", {operand("grad", grad), operand("x", x)});
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "filter2d_grad_k: expected a float32 or float64 x, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 2, "x must have at least 2 dims, got ", x.dim());
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type(), "grad (",
              grad.scalar_type(), " ", grad.sizes(), ") must match x (", x.scalar_type(), " ",
              x.sizes(), ")");
  return spectral_mul_grad_k(irfft2_backward(grad), rfft2(x), k_shape, conj);
}

}  // namespace deconv_ext
