// Allocation of large CPU buffers (see alloc.cpp).
#pragma once
#include <ATen/ATen.h>

namespace deconv_ext {

// at::empty(sizes, options), contiguous; a CPU buffer of 4 MiB or more is
// marked for transparent huge pages before its first touch.
at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace deconv_ext
