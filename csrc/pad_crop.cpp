// Fused pad and crop on the CPU.
//
// pad:  writes the image, extended by a boundary rule, straight into a buffer
//       of the (fast FFT) target size, casting half types to float32 on the
//       way, in one pass.
// crop: reads a window of the inverse-FFT output and casts it to the caller's
//       dtype, in one pass.
// pad_backward: the exact adjoint of pad: every output pixel's gradient is
//       added back to the input pixel it was copied from (the border folds
//       back).
#include "pad_crop.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <vector>

#include "alloc.h"
#include "checks.h"

namespace deconv_ext {
namespace {

enum class Mode { Zeros, Reflect, Symmetric, Replicate, Circular };

Mode parse_mode(c10::string_view mode) {
  if (mode == "zeros" || mode == "constant") return Mode::Zeros;
  if (mode == "reflect") return Mode::Reflect;
  if (mode == "symmetric") return Mode::Symmetric;
  if (mode == "replicate") return Mode::Replicate;
  if (mode == "circular") return Mode::Circular;
  TORCH_CHECK(false, "mode must be one of 'zeros', 'reflect', 'symmetric', 'replicate', "
              "'circular', got '", std::string(mode), "'");
}

inline int64_t pos_mod(int64_t a, int64_t m) {
  const int64_t r = a % m;
  return r < 0 ? r + m : r;
}

// Source index in [0, n) of extended index i, or -1 for a zero.
// reflect and symmetric are periodic, so any pad width is valid (as numpy).
int64_t source_index(int64_t i, int64_t n, Mode mode) {
  if (i >= 0 && i < n) return i;
  switch (mode) {
    case Mode::Zeros:
      return -1;
    case Mode::Replicate:
      return i < 0 ? 0 : n - 1;
    case Mode::Circular:
      return pos_mod(i, n);
    case Mode::Reflect: {
      if (n == 1) return 0;
      const int64_t p = 2 * (n - 1);
      const int64_t m = pos_mod(i, p);
      return m < n ? m : p - m;
    }
    case Mode::Symmetric: {
      const int64_t p = 2 * n;
      const int64_t m = pos_mod(i, p);
      return m < n ? m : p - 1 - m;
    }
  }
  return -1;
}

std::vector<int64_t> index_map(int64_t out_n, int64_t offset, int64_t n, Mode mode) {
  std::vector<int64_t> map(out_n);
  for (int64_t i = 0; i < out_n; ++i) map[i] = source_index(i - offset, n, mode);
  return map;
}

// Views x as (planes, H, W) with its own strides, without copying.
struct Planes {
  int64_t planes, h, w, sp, sh, sw;
};

// Leading dims are collapsed with reshape, which is a view whenever the
// strides allow it (a copy only for exotic layouts). The loops read raw
// data, so a lazily negated view is materialised first.
at::Tensor as_planes(const at::Tensor& x) {
  return x.resolve_neg().reshape({-1, x.size(-2), x.size(-1)});
}

Planes planes_of(const at::Tensor& x3) {
  return {x3.size(0), x3.size(1), x3.size(2), x3.stride(0), x3.stride(1), x3.stride(2)};
}

template <typename In, typename Out>
void pad_loop(const at::Tensor& x3, at::Tensor& out3, const std::vector<int64_t>& rows,
              const std::vector<int64_t>& cols, int64_t left) {
  const Planes s = planes_of(x3);
  const int64_t oh = out3.size(1), ow = out3.size(2);
  const In* src = x3.const_data_ptr<In>();
  Out* dst = out3.mutable_data_ptr<Out>();
  // Columns [lo, hi) of an output row are the source row itself: copied as
  // a contiguous run (vectorised) rather than through the index map.
  const int64_t lo = std::min(std::max<int64_t>(left, 0), ow);
  const int64_t hi = std::max(lo, std::min(ow, left + s.w));
  at::parallel_for(0, s.planes * oh, 16, [&](int64_t begin, int64_t end) {
    for (int64_t pr = begin; pr < end; ++pr) {
      const int64_t p = pr / oh, i = pr % oh;
      Out* o = dst + pr * ow;
      const int64_t r = rows[i];
      if (r < 0) {
        for (int64_t j = 0; j < ow; ++j) o[j] = Out(0);
        continue;
      }
      const In* row = src + p * s.sp + r * s.sh;
      auto mapped = [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t c = cols[j];
          o[j] = c < 0 ? Out(0) : static_cast<Out>(row[c * s.sw]);
        }
      };
      mapped(0, lo);
      if (s.sw == 1) {
        const In* run = row + (lo - left);
        for (int64_t j = lo; j < hi; ++j) o[j] = static_cast<Out>(run[j - lo]);
      } else {
        mapped(lo, hi);
      }
      mapped(hi, ow);
    }
  });
}

template <typename T>
void pad_backward_loop(const at::Tensor& g3, at::Tensor& out3,
                       const std::vector<std::vector<int64_t>>& rows_of,
                       const std::vector<int64_t>& cols) {
  const Planes s = planes_of(g3);
  const int64_t h = out3.size(1), w = out3.size(2);
  const T* g = g3.const_data_ptr<T>();
  T* dst = out3.mutable_data_ptr<T>();
  // Each task owns whole input rows, so the accumulation needs no atomics.
  at::parallel_for(0, s.planes * h, 4, [&](int64_t begin, int64_t end) {
    for (int64_t pr = begin; pr < end; ++pr) {
      const int64_t p = pr / h, r = pr % h;
      T* o = dst + pr * w;
      for (int64_t c = 0; c < w; ++c) o[c] = T(0);
      for (const int64_t i : rows_of[r]) {
        const T* row = g + p * s.sp + i * s.sh;
        for (int64_t j = 0; j < s.w; ++j) {
          const int64_t c = cols[j];
          if (c >= 0) o[c] += row[j * s.sw];
        }
      }
    }
  });
}

// Offsets beyond this are refused: no FFT buffer is that large, and the
// index arithmetic (i - offset) must not overflow.
constexpr int64_t kMaxOffset = int64_t(1) << 40;

void check_image(const char* op, const at::Tensor& x, const char* name) {
  check_cpu_operands(op, {operand(name, x)});
  TORCH_CHECK(x.dim() >= 2, name, " must have at least 2 dims, got ", x.dim());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), name, " must be a floating tensor, got ",
              x.scalar_type());
}

}  // namespace

at::ScalarType compute_dtype(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

std::vector<int64_t> with_last2(at::IntArrayRef sizes, int64_t h, int64_t w) {
  std::vector<int64_t> out(sizes.begin(), sizes.end());
  out[out.size() - 2] = h;
  out[out.size() - 1] = w;
  return out;
}

at::Tensor pad(const at::Tensor& x, int64_t top, int64_t left, int64_t height, int64_t width,
               c10::string_view mode) {
  check_image("pad", x, "x");
  const Mode m = parse_mode(mode);
  const int64_t h = x.size(-2), w = x.size(-1);
  TORCH_CHECK_VALUE(height >= 0 && width >= 0, "pad: output size must be >= 0, got ", height,
                    "x", width);
  TORCH_CHECK_VALUE(std::abs(top) <= kMaxOffset && std::abs(left) <= kMaxOffset,
                    "pad: offsets (", top, ", ", left, ") are out of range (|offset| <= 2^40)");
  at::Tensor out = empty_large(with_last2(x.sizes(), height, width),
                             x.options().dtype(compute_dtype(x.scalar_type()))
                                 .memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  if (h == 0 || w == 0) {
    // An empty plane has no pixel to extend: zeros pad it with zeros (as
    // numpy's constant mode); every other rule needs a pixel to copy.
    TORCH_CHECK_VALUE(m == Mode::Zeros, "pad: cannot extend an empty ", h, "x", w,
                      " plane by mode '", std::string(mode), "' (only 'zeros' can)");
    return out.zero_();
  }
  const auto rows = index_map(height, top, h, m);
  const auto cols = index_map(width, left, w, m);
  const at::Tensor x3 = as_planes(x);
  at::Tensor out3 = out.view({-1, height, width});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pad", [&] {
    if (out.scalar_type() == at::kFloat) {
      pad_loop<scalar_t, float>(x3, out3, rows, cols, left);
    } else {
      pad_loop<scalar_t, double>(x3, out3, rows, cols, left);
    }
  });
  return out;
}

at::Tensor pad_backward(const at::Tensor& grad, int64_t top, int64_t left, int64_t height,
                        int64_t width, c10::string_view mode) {
  check_image("pad_backward", grad, "grad");
  const Mode m = parse_mode(mode);
  TORCH_CHECK(height > 0 && width > 0, "pad_backward: input size must be > 0, got ", height,
              "x", width);
  TORCH_CHECK_VALUE(std::abs(top) <= kMaxOffset && std::abs(left) <= kMaxOffset,
                    "pad_backward: offsets (", top, ", ", left,
                    ") are out of range (|offset| <= 2^40)");
  const auto st = compute_dtype(grad.scalar_type());
  at::Tensor g = grad.scalar_type() == st ? grad : grad.to(st);
  at::Tensor out = empty_large(with_last2(grad.sizes(), height, width),
                             grad.options().dtype(st).memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  if (grad.numel() == 0) return out.zero_();  // an empty padded plane: nothing flows back
  const auto rows = index_map(grad.size(-2), top, height, m);
  const auto cols = index_map(grad.size(-1), left, width, m);
  std::vector<std::vector<int64_t>> rows_of(height);
  for (int64_t i = 0; i < static_cast<int64_t>(rows.size()); ++i) {
    if (rows[i] >= 0) rows_of[rows[i]].push_back(i);
  }
  const at::Tensor g3 = as_planes(g);
  at::Tensor out3 = out.view({-1, height, width});
  AT_DISPATCH_FLOATING_TYPES(st, "pad_backward", [&] {
    pad_backward_loop<scalar_t>(g3, out3, rows_of, cols);
  });
  return out;
}

at::Tensor crop(const at::Tensor& x, int64_t top, int64_t left, int64_t height, int64_t width,
                at::ScalarType dtype) {
  check_image("crop", x, "x");
  TORCH_CHECK(at::isFloatingType(dtype), "crop: dtype must be floating, got ", dtype);
  TORCH_CHECK(top >= 0 && left >= 0 && height >= 0 && width >= 0 &&
                  top + height <= x.size(-2) && left + width <= x.size(-1),
              "crop: window (", top, ", ", left, ", ", height, ", ", width,
              ") does not fit in ", x.size(-2), "x", x.size(-1));
  at::Tensor out = empty_large(with_last2(x.sizes(), height, width),
                             x.options().dtype(dtype).memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  // A crop is a pad whose window lies inside the image: same loop, no
  // boundary rule ever used.
  const auto rows = index_map(height, -top, x.size(-2), Mode::Zeros);
  const auto cols = index_map(width, -left, x.size(-1), Mode::Zeros);
  const at::Tensor x3 = as_planes(x);
  at::Tensor out3 = out.view({-1, height, width});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "crop_in", [&] {
    using In = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "crop_out", [&] {
      pad_loop<In, scalar_t>(x3, out3, rows, cols, -left);
    });
  });
  return out;
}

}  // namespace deconv_ext
