#include "checks.h"

#include <ATen/MemoryOverlap.h>
#include <c10/core/GradMode.h>
#include <cmath>
#include <limits>

namespace deconv_ext {

void check_cpu_operands(const char* op, std::initializer_list<Operand> operands) {
  for (const Operand& o : operands) {
    if (o.tensor == nullptr) continue;
    const at::Tensor& t = *o.tensor;
    TORCH_CHECK_VALUE(t.defined(), op, ": ", o.name, " is an undefined tensor");
    TORCH_CHECK_TYPE(t.layout() == at::kStrided, op, ": ", o.name,
                     " must be a dense (strided) tensor, got layout ", t.layout());
    TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", o.name, " is on ", t.device(),
                      " but this kernel runs on the CPU; every tensor argument must be on one "
                      "device");
  }
}

void check_dtype(const char* op, const Operand& t, at::ScalarType expected) {
  TORCH_CHECK_TYPE(t.tensor->scalar_type() == expected, op, ": ", t.name, " must be ", expected,
                   ", got ", t.tensor->scalar_type());
}

void check_complex(const char* op, const Operand& t) {
  const auto s = t.tensor->scalar_type();
  TORCH_CHECK_TYPE(s == at::kComplexFloat || s == at::kComplexDouble, op, ": ", t.name,
                   " must be complex64 or complex128, got ", s);
}

void check_writable(const char* op, const Operand& out, std::initializer_list<Operand> inputs) {
  const at::Tensor& o = *out.tensor;
  TORCH_CHECK_VALUE(at::has_internal_overlap(o) != at::MemOverlap::Yes, op, ": ", out.name,
                    " is written in place but some of its elements share memory (strides ",
                    o.strides(), "); pass a tensor with distinct elements, e.g. .clone()");
  for (const Operand& in : inputs) {
    if (in.tensor == nullptr) continue;
    TORCH_CHECK_VALUE(at::get_overlap_status(o, *in.tensor) != at::MemOverlapStatus::Partial,
                      op, ": ", in.name, " partially overlaps ", out.name,
                      ", which is written in place; pass a copy");
  }
  TORCH_CHECK_VALUE(!(o.requires_grad() && o.is_leaf() && c10::GradMode::is_enabled()), op,
                    ": ", out.name, " is a leaf tensor that requires grad and cannot be "
                    "written in place (use the out-of-place op, or torch.no_grad())");
}

void check_eps(const char* op, double eps, at::ScalarType real) {
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0.0, op, ": eps must be a finite number >= 0, got ",
                    eps);
  TORCH_CHECK_VALUE(real != at::kFloat || eps <= std::numeric_limits<float>::max(), op, ": eps = ",
                    eps, " is infinite in float32 (the largest float32 is 3.4e38)");
}

}  // namespace deconv_ext
