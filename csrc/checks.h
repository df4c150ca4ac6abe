// Checks every op runs on its tensor arguments before it reads or writes any
// data (see docs/architecture.md, "Where each check lives").
//
// Why the CPU kernels need them: the dispatcher picks the CPU kernel when
// any one argument is a CPU tensor, so a meta, CUDA or sparse operand beside
// it would be read as raw CPU memory (uninitialised results, or a signal).
#pragma once
#include <ATen/ATen.h>

#include <initializer_list>

namespace deconv_ext {

// One named tensor argument of an op; `tensor` is null for an absent
// optional argument.
struct Operand {
  const char* name;
  const at::Tensor* tensor;
};

inline Operand operand(const char* name, const at::Tensor& t) { return {name, &t}; }
inline Operand operand(const char* name, const c10::optional<at::Tensor>& t) {
  return {name, t.has_value() && t->defined() ? &*t : nullptr};
}

// Every present operand is a defined, dense (strided) CPU tensor.
void check_cpu_operands(const char* op, std::initializer_list<Operand> operands);

// `t` has dtype `expected`.
void check_dtype(const char* op, const Operand& t, at::ScalarType expected);

// `t` is complex64 or complex128.
void check_complex(const char* op, const Operand& t);

// `out` can be written in place while `inputs` are read element by element:
// no element of `out` is reached twice (a stride 0 or overlapping strides),
// no input overlaps it other than exactly (the same elements, read before
// written), and autograd does not track it (as torch's in-place ops refuse a
// leaf that requires grad).
void check_writable(const char* op, const Operand& out, std::initializer_list<Operand> inputs);

// `eps` is a finite number >= 0, and finite in the op's precision `real`
// (1e300 is a double but an infinite float32).
void check_eps(const char* op, double eps, at::ScalarType real);

}  // namespace deconv_ext
