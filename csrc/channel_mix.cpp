// Per-frequency channel mixing on the CPU: X(w) = G(w) Y(w) for one small
// complex matrix per group and frequency (the multi-channel pseudo-inverse,
// forward model and adjoint of a conv layer, deconv_ext/multichannel.py).
//
// Layout: spectra are planar, (batch, channel, H, Wf), and so is g,
// (groups, M, N, H, Wf): for one (batch, group) pair every operand is a set
// of unit-stride streams over the frequencies. The work is cut into units of
// (group, chunk of frequencies, batch element) with the batch index fastest,
// so consecutive units of one thread reuse the same chunk of g from cache
// (g is read ~once per thread, not once per batch element), and the units
// run in parallel with at::parallel_for. Within a unit the loops over
// frequencies are plain real arithmetic on interleaved (re, im) pairs, which
// the compiler vectorises.
#include "channel_mix.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/complex.h>
#include <algorithm>

#include "alloc.h"
#include "checks.h"

namespace deconv_ext {
namespace {

// Frequencies per unit: a chunk of g for 8x8 channels is 64 * 256 * 16 B =
// 256 KiB in complex128 (128 KiB in complex64), within L2.
constexpr int64_t kChunk = 256;

void check_complex(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kComplexFloat || t.scalar_type() == at::kComplexDouble,
              name, " must be complex64 or complex128, got ", t.scalar_type());
}

// out[p, f] (+)= c(p, q, f) * y[q, f] over q, for f in [0, len); c is g[p, q]
// or conj(g[q, p]) (adjoint). Pointers are already offset to the chunk.
template <typename T>
inline void mix_unit(const T* __restrict__ y, const T* __restrict__ g, T* __restrict__ out,
                     int64_t P, int64_t Q, int64_t F, int64_t len, bool adjoint) {
  // Strides of one channel / one matrix entry, in units of T (2 per complex).
  const int64_t cs = 2 * F;
  for (int64_t p = 0; p < P; ++p) {
    T* __restrict__ o = out + p * cs;
    for (int64_t q = 0; q < Q; ++q) {
      const T* __restrict__ yq = y + q * cs;
      // g is (M, N): entry (p, q) forward, (q, p) conjugated for the adjoint.
      const T* __restrict__ gq = g + (adjoint ? (q * P + p) : (p * Q + q)) * cs;
      const T s = adjoint ? T(-1) : T(1);
      if (q == 0) {
        for (int64_t f = 0; f < len; ++f) {
          const T gr = gq[2 * f], gi = s * gq[2 * f + 1];
          const T yr = yq[2 * f], yi = yq[2 * f + 1];
          o[2 * f] = gr * yr - gi * yi;
          o[2 * f + 1] = gr * yi + gi * yr;
        }
      } else {
        for (int64_t f = 0; f < len; ++f) {
          const T gr = gq[2 * f], gi = s * gq[2 * f + 1];
          const T yr = yq[2 * f], yi = yq[2 * f + 1];
          o[2 * f] += gr * yr - gi * yi;
          o[2 * f + 1] += gr * yi + gi * yr;
        }
      }
    }
  }
}

template <typename T>
void mix_loop(const T* y, const T* g, T* out, int64_t B, int64_t groups, int64_t M, int64_t N,
              int64_t F, bool adjoint) {
  const int64_t P = adjoint ? N : M;  // output channels per group
  const int64_t Q = adjoint ? M : N;  // input channels per group
  const int64_t nchunks = (F + kChunk - 1) / kChunk;
  const int64_t units = groups * nchunks * B;
  // At least ~64K multiply-adds per task so the scheduling cost stays small.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, kChunk * P * Q));
  at::parallel_for(0, units, grain, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t b = u % B;
      const int64_t chunk = (u / B) % nchunks;
      const int64_t grp = u / (B * nchunks);
      const int64_t f0 = chunk * kChunk;
      const int64_t len = std::min(kChunk, F - f0);
      const T* yb = y + 2 * (((b * groups + grp) * Q) * F + f0);
      const T* gb = g + 2 * ((grp * M * N) * F + f0);
      T* ob = out + 2 * (((b * groups + grp) * P) * F + f0);
      mix_unit<T>(yb, gb, ob, P, Q, F, len, adjoint);
    }
  });
}

// out[g, m, n, f] = sum_b a[b, g, m, f] * conj(c[b, g, n, f]).
template <typename T>
void outer_loop(const T* a, const T* c, T* out, int64_t B, int64_t groups, int64_t M, int64_t N,
                int64_t F) {
  const int64_t nchunks = (F + kChunk - 1) / kChunk;
  const int64_t units = groups * nchunks;
  at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t chunk = u % nchunks, grp = u / nchunks;
      const int64_t f0 = chunk * kChunk, len = std::min(kChunk, F - f0);
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t n = 0; n < N; ++n) {
          T* __restrict__ o = out + 2 * (((grp * M + m) * N + n) * F + f0);
          for (int64_t f = 0; f < 2 * len; ++f) o[f] = T(0);
          for (int64_t b = 0; b < B; ++b) {
            const T* __restrict__ ap = a + 2 * (((b * groups + grp) * M + m) * F + f0);
            const T* __restrict__ cp = c + 2 * (((b * groups + grp) * N + n) * F + f0);
            for (int64_t f = 0; f < len; ++f) {
              const T ar = ap[2 * f], ai = ap[2 * f + 1];
              const T cr = cp[2 * f], ci = cp[2 * f + 1];
              // a * conj(c)
              o[2 * f] += ar * cr + ai * ci;
              o[2 * f + 1] += ai * cr - ar * ci;
            }
          }
        }
      }
    }
  });
}

// Leading (batch) element count of a spectrum (..., C, H, Wf).
int64_t batch_of(const at::Tensor& t) {
  int64_t b = 1;
  for (int64_t i = 0; i < t.dim() - 3; ++i) b *= t.size(i);
  return b;
}

}  // namespace

at::Tensor channel_mix(const at::Tensor& y, const at::Tensor& g, bool adjoint) {
  check_cpu_operands("channel_mix", {operand("y", y), operand("g", g)});
  check_complex(y, "y");
  check_complex(g, "g");
  TORCH_CHECK(g.scalar_type() == y.scalar_type(), "g dtype ", g.scalar_type(),
              " differs from y dtype ", y.scalar_type());
  TORCH_CHECK(y.dim() >= 3, "y must be (..., C, H, Wf), got shape ", y.sizes());
  TORCH_CHECK(g.dim() == 5, "g must be (groups, M, N, H, Wf), got shape ", g.sizes());
  TORCH_CHECK(y.device() == g.device(), "y is on ", y.device(), " but g is on ", g.device());
  const int64_t groups = g.size(0), M = g.size(1), N = g.size(2);
  const int64_t H = y.size(-2), Wf = y.size(-1);
  TORCH_CHECK(g.size(3) == H && g.size(4) == Wf, "g of shape ", g.sizes(),
              " does not match the spectrum size (", H, ", ", Wf, ") of y");
  const int64_t cin = groups * (adjoint ? M : N), cout = groups * (adjoint ? N : M);
  TORCH_CHECK(y.size(-3) == cin, "y has ", y.size(-3), " channels; g of shape ", g.sizes(),
              adjoint ? " (adjoint) expects groups*M = " : " expects groups*N = ", cin);
  std::vector<int64_t> shape(y.sizes().begin(), y.sizes().end());
  shape[shape.size() - 3] = cout;
  at::Tensor out = empty_large(shape, y.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  if (y.numel() == 0) return out.zero_();
  // Raw reads ignore the lazy conjugate and negative bits and the strides:
  // materialise both. No copy when already plain and contiguous.
  const at::Tensor yv = y.resolve_conj().resolve_neg().contiguous();
  const at::Tensor gv = g.resolve_conj().resolve_neg().contiguous();
  const int64_t B = batch_of(yv);
  AT_DISPATCH_FLOATING_TYPES(c10::toRealValueType(y.scalar_type()), "channel_mix", [&] {
    mix_loop<scalar_t>(reinterpret_cast<const scalar_t*>(yv.const_data_ptr()),
                       reinterpret_cast<const scalar_t*>(gv.const_data_ptr()),
                       reinterpret_cast<scalar_t*>(out.mutable_data_ptr()), B, groups, M, N,
                       H * Wf, adjoint);
  });
  return out;
}

at::Tensor channel_mix_outer(const at::Tensor& a, const at::Tensor& c, int64_t groups) {
  check_cpu_operands("channel_mix_outer", {operand("a", a), operand("c", c)});
  check_complex(a, "a");
  check_complex(c, "c");
  TORCH_CHECK(a.scalar_type() == c.scalar_type(), "a dtype ", a.scalar_type(),
              " differs from c dtype ", c.scalar_type());
  TORCH_CHECK(a.dim() >= 3 && c.dim() == a.dim(), "a and c must be (..., C, H, Wf) with the "
              "same number of dims, got ", a.sizes(), " and ", c.sizes());
  TORCH_CHECK(groups >= 1, "groups must be >= 1, got ", groups);
  for (int64_t i = 0; i < a.dim(); ++i) {
    if (i == a.dim() - 3) continue;
    TORCH_CHECK(a.size(i) == c.size(i), "a of shape ", a.sizes(), " and c of shape ", c.sizes(),
                " differ outside the channel dim");
  }
  TORCH_CHECK(a.size(-3) % groups == 0 && c.size(-3) % groups == 0, "channel counts ",
              a.size(-3), " and ", c.size(-3), " are not divisible by groups=", groups);
  const int64_t M = a.size(-3) / groups, N = c.size(-3) / groups;
  const int64_t H = a.size(-2), Wf = a.size(-1);
  at::Tensor out = empty_large({groups, M, N, H, Wf}, a.options());
  if (out.numel() == 0) return out;
  const at::Tensor av = a.resolve_conj().resolve_neg().contiguous();
  const at::Tensor cv = c.resolve_conj().resolve_neg().contiguous();
  const int64_t B = av.numel() == 0 ? 0 : batch_of(av);
  AT_DISPATCH_FLOATING_TYPES(c10::toRealValueType(a.scalar_type()), "channel_mix_outer", [&] {
    outer_loop<scalar_t>(reinterpret_cast<const scalar_t*>(av.const_data_ptr()),
                         reinterpret_cast<const scalar_t*>(cv.const_data_ptr()),
                         reinterpret_cast<scalar_t*>(out.mutable_data_ptr()), B, groups, M, N,
                         H * Wf);
  });
  return out;
}

}  // namespace deconv_ext
