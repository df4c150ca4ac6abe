// Binned power of a spectrum: one pass over Y for a parameter-choice rule.
//
// A rule's objective is a sum over frequencies of a weight times a function
// of q = |K|^2 / |R|^2; frequencies in one narrow bin of log q share it
// (deconv_ext/maths/parameter_choice.py, RuleBins). Per call, only the data
// half, sum c(w) |Y(w)|^2 per bin, needs the image. In torch that is |Y|^2,
// a float64 copy, a multiply and a scatter_add: four passes over a
// spectrum-sized tensor (at 2048^2, 32 ms of a 38 ms choice); here it is one.
#include "rule_bins.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/complex.h>

#include <atomic>
#include <cstdint>
#include <vector>

#include "checks.h"

namespace deconv_ext {
namespace {

// Rows [r0, r1) of one plane into `acc` (nbins doubles, accumulated).
// Returns false if an index lies outside [0, nbins) (that entry is skipped).
template <typename T>
bool bin_rows(const T* y, int64_t sh, int64_t sw, const int64_t* idx, const double* w,
              int64_t w_row, int64_t Wf, int64_t r0, int64_t r1, int64_t nbins, double* acc) {
  bool ok = true;
  for (int64_t r = r0; r < r1; ++r) {
    const T* yr = y + r * sh;
    const int64_t* ir = idx + r * Wf;
    const double* wr = w + r * w_row;
    for (int64_t f = 0; f < Wf; ++f) {
      const int64_t b = ir[f];
      if (static_cast<uint64_t>(b) >= static_cast<uint64_t>(nbins)) {
        ok = false;
        continue;
      }
      const double re = yr[f * sw], im = yr[f * sw + 1];
      acc[b] += wr[f] * (re * re + im * im);
    }
  }
  return ok;
}

}  // namespace

at::Tensor bin_power(const at::Tensor& Y, const at::Tensor& idx, const at::Tensor& weights,
                     int64_t nbins) {
  check_cpu_operands("bin_power", {operand("Y", Y), operand("idx", idx),
                                   operand("weights", weights)});
  check_complex("bin_power", operand("Y", Y));
  check_dtype("bin_power", operand("idx", idx), at::kLong);
  check_dtype("bin_power", operand("weights", weights), at::kDouble);
  TORCH_CHECK_VALUE(Y.dim() >= 2, "bin_power: Y must be (..., H, Wf), got ", Y.sizes());
  const int64_t H = Y.size(-2), Wf = Y.size(-1);
  TORCH_CHECK_VALUE(idx.dim() == 2 && idx.size(0) == H && idx.size(1) == Wf,
                    "bin_power: idx of shape ", idx.sizes(), " must be (H, Wf) = (", H, ", ",
                    Wf, ")");
  TORCH_CHECK_VALUE((weights.dim() == 1 && weights.size(0) == Wf) ||
                        (weights.dim() == 2 && weights.size(0) == H && weights.size(1) == Wf),
                    "bin_power: weights of shape ", weights.sizes(), " must be (Wf,) or (H, Wf)");
  TORCH_CHECK_VALUE(nbins > 0, "bin_power: nbins must be > 0, got ", nbins);
  std::vector<int64_t> shape(Y.sizes().begin(), Y.sizes().end() - 2);
  shape.push_back(nbins);
  at::Tensor out = at::zeros(shape, Y.options().dtype(at::kDouble));
  if (Y.numel() == 0) return out;
  const at::Tensor ic = idx.contiguous(), wc = weights.contiguous();
  const int64_t* ip = ic.const_data_ptr<int64_t>();
  const double* wp = wc.const_data_ptr<double>();
  const int64_t w_row = weights.dim() == 2 ? Wf : 0;
  // Planes keep their strides (in units of the real type); a lazy conjugate
  // or negative bit does not change |Y|^2.
  const at::Tensor planes = Y.reshape({-1, H, Wf});
  const int64_t P = planes.size(0);
  double* op = out.mutable_data_ptr<double>();
  std::atomic<bool> in_range{true};
  AT_DISPATCH_FLOATING_TYPES(c10::toRealValueType(Y.scalar_type()), "bin_power", [&] {
    const scalar_t* base = reinterpret_cast<const scalar_t*>(planes.const_data_ptr());
    const int64_t sp = 2 * planes.stride(0), sh = 2 * planes.stride(1), sw = 2 * planes.stride(2);
    if (P > 1) {  // one plane per task: each owns its output row
      at::parallel_for(0, P, 1, [&](int64_t b, int64_t e) {
        for (int64_t p = b; p < e; ++p) {
          if (!bin_rows<scalar_t>(base + p * sp, sh, sw, ip, wp, w_row, Wf, 0, H, nbins,
                                  op + p * nbins)) {
            in_range.store(false);
          }
        }
      });
      return;
    }
    // One plane: chunks of rows into partial sums, added up in chunk order
    // (the same result for any thread count).
    const int64_t chunk = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(Wf, 1));
    const int64_t nchunks = (H + chunk - 1) / chunk;
    std::vector<double> part(static_cast<size_t>(nchunks * nbins), 0.0);
    at::parallel_for(0, nchunks, 1, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        if (!bin_rows<scalar_t>(base, sh, sw, ip, wp, w_row, Wf, c * chunk,
                                std::min(H, (c + 1) * chunk), nbins, part.data() + c * nbins)) {
          in_range.store(false);
        }
      }
    });
    for (int64_t c = 0; c < nchunks; ++c) {
      for (int64_t i = 0; i < nbins; ++i) op[i] += part[c * nbins + i];
    }
  });
  TORCH_CHECK_VALUE(in_range.load(), "bin_power: idx entries must lie in [0, ", nbins, ")");
  return out;
}

}  // namespace deconv_ext
