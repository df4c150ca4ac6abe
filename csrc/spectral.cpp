// Fused per-frequency kernels on the CPU: the regularised spectral solve and
// the plain spectral multiply (forward blur / adjoint).
//
// Every input after the spectrum `y` is broadcast to `y`'s shape by
// TensorIterator (stride 0), so a shared kernel spectrum is read from cache,
// never materialised. The loops run in parallel over TensorIterator's outer
// dimension (batch x rows) with at::parallel_for.
#include "spectral.h"

#include <ATen/TensorIterator.h>
#include <ATen/Dispatch.h>
#include <c10/util/complex.h>

#include <limits>

#include "alloc.h"
#include "checks.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DECONV_TARGET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DECONV_TARGET_CLONES
#endif

namespace deconv_ext {
namespace {

void check_spectrum(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_complex(), name, " must be a complex tensor, got ", t.scalar_type());
  TORCH_CHECK(t.scalar_type() == at::kComplexFloat || t.scalar_type() == at::kComplexDouble,
              name, " must be complex64 or complex128, got ", t.scalar_type());
}

// An operand of shape `t` broadcasts to y's shape `y`.
void check_broadcasts(at::IntArrayRef t, at::IntArrayRef y, const char* name) {
  const int64_t nt = static_cast<int64_t>(t.size()), ny = static_cast<int64_t>(y.size());
  TORCH_CHECK(nt <= ny, name, " has more dims (", nt, ") than y (", ny, ")");
  for (int64_t i = 1; i <= nt; ++i) {
    const int64_t a = t[nt - i], b = y[ny - i];
    TORCH_CHECK(a == b || a == 1, name, " of shape ", t, " does not broadcast to y of shape ",
                y);
  }
}

void check_broadcasts(const at::Tensor& t, const at::Tensor& y, const char* name) {
  check_broadcasts(t.sizes(), y.sizes(), name);
}

// The per-element rule of docs/architecture.md ("The maths"). p = eps * reg is the
// regulariser weight at this frequency; where it is zero the answer is the
// pseudo-inverse with threshold `thr2` on |K|^2, elsewhere Tikhonov.
template <typename T>
inline c10::complex<T> solve_one(c10::complex<T> y, c10::complex<T> k, T p, T thr2) {
  const T kr = k.real(), ki = k.imag();
  const T k2 = kr * kr + ki * ki;
  T den;
  if (p > T(0)) {
    den = k2 + p;
  } else {
    if (!(k2 > thr2)) return c10::complex<T>(T(0), T(0));
    den = k2;
  }
  const T inv = T(1) / den;
  const T yr = y.real(), yi = y.imag();
  // conj(K) * Y / den
  return c10::complex<T>((kr * yr + ki * yi) * inv, (kr * yi - ki * yr) * inv);
}

// Contiguous fast path: y/out/k dense along the row, thresh constant, reg
// dense or absent. Branch-free, so it vectorises; compiled for AVX-512, AVX2
// and baseline x86-64, picked at load time (the extension is built without
// -march=native so that it stays portable). `out` may be `y` (in place): each
// element is read before it is written, hence ivdep rather than __restrict.
template <typename T, bool HasReg>
DECONV_TARGET_CLONES
void solve_row_dense(T* out, const T* y, const T* k, const T* reg, T eps, T thr2, int64_t n) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    const T kr = k[2 * i], ki = k[2 * i + 1];
    const T yr = y[2 * i], yi = y[2 * i + 1];
    const T k2 = kr * kr + ki * ki;
    const T p = HasReg ? eps * reg[i] : eps;
    const T den = p > T(0) ? k2 + p : k2;
    // live = 0 where the pseudo-inverse drops the frequency (or den == 0).
    const T live = ((p > T(0)) | (k2 > thr2)) ? T(1) : T(0);
    const T inv = live / (den + (T(1) - live));
    out[2 * i] = (kr * yr + ki * yi) * inv;
    out[2 * i + 1] = (kr * yi - ki * yr) * inv;
  }
}

template <typename T>
void solve_kernel(at::TensorIterator& iter, bool has_reg, T eps) {
  using C = c10::complex<T>;
  constexpr int64_t cs = sizeof(C), rs = sizeof(T);
  // operand order: out, y, k, thresh, [reg]
  iter.for_each([&](char** data, const int64_t* strides, int64_t n) {
    char* out = data[0];
    const char* y = data[1];
    const char* k = data[2];
    const char* th = data[3];
    const char* rg = has_reg ? data[4] : nullptr;
    const int64_t so = strides[0], sy = strides[1], sk = strides[2], st = strides[3];
    const int64_t sr = has_reg ? strides[4] : 0;
    if (so == cs && sy == cs && sk == cs && st == 0 && (!has_reg || sr == rs || sr == 0)) {
      T* o = reinterpret_cast<T*>(out);
      const T* yy = reinterpret_cast<const T*>(y);
      const T* kk = reinterpret_cast<const T*>(k);
      const T* rr = reinterpret_cast<const T*>(rg);
      const T t2 = *reinterpret_cast<const T*>(th);
      if (has_reg && sr == rs) {
        solve_row_dense<T, true>(o, yy, kk, rr, eps, t2, n);
      } else {
        // No reg, or one reg value along the row (a per-plane eps chosen by
        // a rule, broadcast): a constant p.
        const T p = has_reg ? eps * *rr : eps;
        solve_row_dense<T, false>(o, yy, kk, rr, p, t2, n);
      }
      return;
    }
    for (int64_t i = 0; i < n; ++i) {
      const T p = has_reg ? eps * *reinterpret_cast<const T*>(rg + i * sr) : eps;
      *reinterpret_cast<C*>(out + i * so) =
          solve_one<T>(*reinterpret_cast<const C*>(y + i * sy),
                       *reinterpret_cast<const C*>(k + i * sk), p,
                       *reinterpret_cast<const T*>(th + i * st));
    }
  }, /*grain_size=*/32768);
}

template <typename T>
void mul_kernel(at::TensorIterator& iter, bool conj) {
  using C = c10::complex<T>;
  iter.for_each([&](char** data, const int64_t* strides, int64_t n) {
    char* out = data[0];
    const char* y = data[1];
    const char* k = data[2];
    const int64_t so = strides[0], sy = strides[1], sk = strides[2];
    if (so == sizeof(C) && sy == sizeof(C) && sk == sizeof(C)) {
      T* o = reinterpret_cast<T*>(out);
      const T* yy = reinterpret_cast<const T*>(y);
      const T* kk = reinterpret_cast<const T*>(k);
      const T sgn = conj ? T(-1) : T(1);
      for (int64_t i = 0; i < n; ++i) {
        const T kr = kk[2 * i], ki = sgn * kk[2 * i + 1];
        const T yr = yy[2 * i], yi = yy[2 * i + 1];
        o[2 * i] = kr * yr - ki * yi;
        o[2 * i + 1] = kr * yi + ki * yr;
      }
      return;
    }
    for (int64_t i = 0; i < n; ++i) {
      C kv = *reinterpret_cast<const C*>(k + i * sk);
      if (conj) kv = std::conj(kv);
      *reinterpret_cast<C*>(out + i * so) = kv * *reinterpret_cast<const C*>(y + i * sy);
    }
  }, /*grain_size=*/32768);
}

// Gradients of X = conj(K) Y / d, d = |K|^2 + p (p = eps * reg), in PyTorch's
// convention (grad_z = g conj(dX/dz) + conj(g) dX/dconj(z)):
//   dL/dK = -g K^2 conj(Y) / d^2 + conj(g) Y p / d^2
//   dL/dp = -Re(g K conj(Y)) / d^2
// On the pseudo-inverse branch (p == 0) the same with d = |K|^2, and 0 where
// the threshold drops the frequency.
template <typename T>
void solve_backward_kernel(at::TensorIterator& iter, bool has_reg, T eps) {
  using C = c10::complex<T>;
  // operand order: grad_k, grad_p, g, y, k, thresh, [reg]
  iter.for_each([&](char** data, const int64_t* strides, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      const C g = *reinterpret_cast<const C*>(data[2] + i * strides[2]);
      const C y = *reinterpret_cast<const C*>(data[3] + i * strides[3]);
      const C k = *reinterpret_cast<const C*>(data[4] + i * strides[4]);
      const T thr2 = *reinterpret_cast<const T*>(data[5] + i * strides[5]);
      const T p = has_reg ? eps * *reinterpret_cast<const T*>(data[6] + i * strides[6]) : eps;
      const T k2 = std::norm(k);
      C gk(0, 0);
      T gp(0);
      const bool live = p > T(0) || k2 > thr2;
      const T d = k2 + (p > T(0) ? p : T(0));
      // d = inf (eps * reg beyond the precision's range): X = 0 there, and
      // so are both derivatives (inf * 0 would make them NaN).
      if (live && d < std::numeric_limits<T>::infinity()) {
        // Divided by d twice rather than by d^2, which overflows first.
        const T inv = T(1) / d;
        const C gky = g * k * std::conj(y);
        gk = (-gky * k * inv + std::conj(g) * y * (p * inv)) * inv;
        gp = -gky.real() * inv * inv;
      }
      *reinterpret_cast<C*>(data[0] + i * strides[0]) = gk;
      *reinterpret_cast<T*>(data[1] + i * strides[1]) = gp;
    }
  }, /*grain_size=*/32768);
}

}  // namespace

namespace {

// The operands of the solve and of its backward: complex y and k of one
// dtype, a real thresh (and reg) of its precision, all broadcasting to y,
// all dense on the CPU, and a finite eps >= 0.
void check_solve_operands(const char* op, const at::Tensor& y, const at::Tensor& k,
                          const c10::optional<at::Tensor>& reg, double eps,
                          const at::Tensor& thresh) {
  check_cpu_operands(op, {operand("y", y), operand("k", k), operand("reg", reg),
                          operand("thresh", thresh)});
  check_spectrum(y, "y");
  check_spectrum(k, "k");
  TORCH_CHECK(k.scalar_type() == y.scalar_type(), "k dtype ", k.scalar_type(),
              " differs from y dtype ", y.scalar_type());
  check_broadcasts(k, y, "k");
  const auto real_t = c10::toRealValueType(y.scalar_type());
  TORCH_CHECK(thresh.scalar_type() == real_t, "thresh must be ", real_t, ", got ",
              thresh.scalar_type());
  check_broadcasts(thresh, y, "thresh");
  check_eps(op, eps, real_t);
  if (reg.has_value() && reg->defined()) {
    TORCH_CHECK(reg->scalar_type() == real_t, "reg must be ", real_t, ", got ",
                reg->scalar_type());
    check_broadcasts(*reg, y, "reg");
  }
}

// Runs the fused solve, writing into `out` (which may be `y` itself: the
// kernel is element-wise).
void run_solve(at::Tensor& out, const at::Tensor& y, const at::Tensor& k,
               const c10::optional<at::Tensor>& reg, double eps, const at::Tensor& thresh) {
  const bool has_reg = reg.has_value() && reg->defined();
  const auto real_t = c10::toRealValueType(y.scalar_type());
  if (y.numel() == 0) return;
  // Raw reads ignore the lazy conjugate and negative bits: materialise them
  // (raw reads ignore a lazy conj bit).
  const at::Tensor yv = y.resolve_conj().resolve_neg();
  const at::Tensor kv = k.resolve_conj().resolve_neg();
  const at::Tensor tv = thresh.resolve_neg();
  auto cfg = at::TensorIteratorConfig();
  cfg.add_output(out).add_const_input(yv).add_const_input(kv).add_const_input(tv);
  const at::Tensor rv = has_reg ? reg->resolve_neg() : at::Tensor();
  if (has_reg) cfg.add_const_input(rv);
  cfg.check_all_same_dtype(false).resize_outputs(false).set_check_mem_overlap(false);
  at::TensorIterator iter = cfg.build();
  AT_DISPATCH_FLOATING_TYPES(real_t, "spectral_solve", [&] {
    solve_kernel<scalar_t>(iter, has_reg, static_cast<scalar_t>(eps));
  });
}

}  // namespace

at::Tensor spectral_solve(const at::Tensor& y, const at::Tensor& k,
                          const c10::optional<at::Tensor>& reg, double eps,
                          const at::Tensor& thresh) {
  check_solve_operands("spectral_solve", y, k, reg, eps, thresh);
  at::Tensor out = empty_large(y.sizes(), y.options().memory_format(at::MemoryFormat::Contiguous));
  run_solve(out, y, k, reg, eps, thresh);
  return out;
}

at::Tensor spectral_solve_adjoint(const at::Tensor& y, const at::Tensor& k,
                                  const c10::optional<at::Tensor>& reg, double eps,
                                  const at::Tensor& thresh) {
  // conj(F) with F = conj(K)/d is K/d: the same solve with the conjugated
  // kernel (same |K|, so the same mask). Conjugating here, inside the op,
  // keeps the conjugate out of compiled backward graphs.
  check_solve_operands("spectral_solve_adjoint", y, k, reg, eps, thresh);
  return spectral_solve(y, k.conj().resolve_conj(), reg, eps, thresh);
}

void spectral_solve_(at::Tensor& y, const at::Tensor& k, const c10::optional<at::Tensor>& reg,
                     double eps, const at::Tensor& thresh) {
  check_solve_operands("spectral_solve_", y, k, reg, eps, thresh);
  TORCH_CHECK(!y.is_conj() && !y.is_neg(),
              "spectral_solve_: y must not carry a lazy conjugate or negative bit");
  check_writable("spectral_solve_", operand("y", y),
                 {operand("k", k), operand("reg", reg), operand("thresh", thresh)});
  run_solve(y, y, k, reg, eps, thresh);
}

at::Tensor spectral_mul(const at::Tensor& y, const at::Tensor& k, bool conj) {
  check_cpu_operands("spectral_mul", {operand("y", y), operand("k", k)});
  check_spectrum(y, "y");
  check_spectrum(k, "k");
  TORCH_CHECK(k.scalar_type() == y.scalar_type(), "k dtype ", k.scalar_type(),
              " differs from y dtype ", y.scalar_type());
  check_broadcasts(k, y, "k");
  const at::Tensor yv = y.resolve_conj().resolve_neg();
  const at::Tensor kv = k.resolve_conj().resolve_neg();
  at::Tensor out = empty_large(y.sizes(), y.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  at::TensorIterator iter = at::TensorIteratorConfig()
                                .add_output(out)
                                .add_const_input(yv)
                                .add_const_input(kv)
                                .resize_outputs(false)
                                .build();
  AT_DISPATCH_FLOATING_TYPES(c10::toRealValueType(y.scalar_type()), "spectral_mul", [&] {
    mul_kernel<scalar_t>(iter, conj);
  });
  return out;
}

}  // namespace deconv_ext

namespace deconv_ext {

std::tuple<at::Tensor, at::Tensor> spectral_solve_backward(
    const at::Tensor& grad, const at::Tensor& y, const at::Tensor& k,
    const c10::optional<at::Tensor>& reg, double eps, const at::Tensor& thresh) {
  check_solve_operands("spectral_solve_backward", y, k, reg, eps, thresh);
  check_cpu_operands("spectral_solve_backward", {operand("grad", grad)});
  check_spectrum(grad, "grad");
  TORCH_CHECK(grad.sizes() == y.sizes() && grad.scalar_type() == y.scalar_type(), "grad (",
              grad.scalar_type(), " ", grad.sizes(), ") must match y (", y.scalar_type(), " ",
              y.sizes(), ")");
  const bool has_reg = reg.has_value() && reg->defined();
  const auto real_t = c10::toRealValueType(y.scalar_type());
  auto opts = y.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor gk_full = empty_large(y.sizes(), opts);
  at::Tensor gp_full = empty_large(y.sizes(), opts.dtype(real_t));
  if (y.numel() > 0) {
    auto cfg = at::TensorIteratorConfig();
    cfg.add_output(gk_full).add_output(gp_full);
    const at::Tensor gv = grad.resolve_conj().resolve_neg(), yv = y.resolve_conj().resolve_neg(),
                     kv = k.resolve_conj().resolve_neg(), tv = thresh.resolve_neg();
    cfg.add_const_input(gv).add_const_input(yv).add_const_input(kv).add_const_input(tv);
    const at::Tensor rv = has_reg ? reg->resolve_neg() : at::Tensor();
    if (has_reg) cfg.add_const_input(rv);
    cfg.check_all_same_dtype(false).resize_outputs(false);
    at::TensorIterator iter = cfg.build();
    AT_DISPATCH_FLOATING_TYPES(real_t, "spectral_solve_backward", [&] {
      solve_backward_kernel<scalar_t>(iter, has_reg, static_cast<scalar_t>(eps));
    });
  } else {
    gk_full.zero_();
    gp_full.zero_();
  }
  // Sum over the dims along which k / reg were broadcast; reg's gradient is
  // eps * dL/dp. Without reg the second output is dL/dp summed to a scalar,
  // i.e. the gradient w.r.t. eps itself.
  at::Tensor gk = at::sum_to(gk_full, k.sizes()).contiguous();
  at::Tensor greg = has_reg ? (at::sum_to(gp_full, reg->sizes()) * eps).contiguous()
                            : gp_full.sum();
  return {gk, greg};
}

at::Tensor spectral_mul_grad_k(const at::Tensor& grad, const at::Tensor& y,
                               at::IntArrayRef k_shape, bool conj) {
  check_cpu_operands("spectral_mul_grad_k", {operand("grad", grad), operand("y", y)});
  check_broadcasts(k_shape, y.sizes(), "k_shape");
  check_spectrum(grad, "grad");
  check_spectrum(y, "y");
  TORCH_CHECK(grad.sizes() == y.sizes() && grad.scalar_type() == y.scalar_type(), "grad (",
              grad.scalar_type(), " ", grad.sizes(), ") must match y (", y.scalar_type(), " ",
              y.sizes(), ")");
  // s = K Y: dL/dK = g conj(Y); s = conj(K) Y: dL/dK = conj(g) Y = conj(g conj(Y)).
  at::Tensor prod = spectral_mul(grad, y, /*conj=*/true);
  at::Tensor out = at::sum_to(prod, k_shape);
  return (conj ? out.conj_physical() : out).contiguous();
}

}  // namespace deconv_ext
