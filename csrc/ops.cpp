// The op schemas (defined once, here) and their CPU kernels. The execution
// layer (deconv_ext/execution/) adds the CUDA (Triton) kernels, fake kernels
// and autograd for the same names; csrc/module.cpp is the pybind11 module.
#include <torch/library.h>

#include "channel_mix.h"
#include "dct.h"
#include "fft.h"
#include "kernel_spectrum.h"
#include "pad_crop.h"
#include "pipeline.h"
#include "spectral.h"

TORCH_LIBRARY(deconv_ext, m) {
  m.def("spectral_solve(Tensor y, Tensor k, Tensor? reg, float eps, Tensor thresh) -> Tensor");
  m.def("spectral_solve_adjoint(Tensor y, Tensor k, Tensor? reg, float eps, Tensor thresh) -> Tensor");
  m.def("spectral_solve_(Tensor(a!) y, Tensor k, Tensor? reg, float eps, Tensor thresh) -> ()");
  m.def("spectral_mul(Tensor y, Tensor k, bool conj) -> Tensor");
  m.def("spectral_solve_backward(Tensor grad, Tensor y, Tensor k, Tensor? reg, float eps, "
        "Tensor thresh) -> (Tensor, Tensor)");
  m.def("spectral_mul_grad_k(Tensor grad, Tensor y, int[] k_shape, bool conj) -> Tensor");
  m.def("deconv2d(Tensor image, Tensor k, Tensor? reg, float eps, Tensor thresh, bool adjoint) -> Tensor");
  m.def("deconv2d_grad_k(Tensor grad, Tensor image, Tensor k, Tensor? reg, float eps, "
        "Tensor thresh, bool adjoint) -> (Tensor, Tensor)");
  m.def("filter2d(Tensor x, Tensor k, bool conj) -> Tensor");
  m.def("filter2d_grad_k(Tensor grad, Tensor x, int[] k_shape, bool conj) -> Tensor");
  m.def("kernel_spectrum(Tensor psf, int height, int width) -> Tensor");
  m.def("kernel_spectrum_backward(Tensor grad, int kh, int kw, int height, int width) -> Tensor");
  m.def("spectral_power(Tensor k) -> Tensor");
  m.def("spectral_power_backward(Tensor grad, Tensor k) -> Tensor");
  m.def("pad(Tensor x, int top, int left, int height, int width, str mode) -> Tensor");
  m.def("pad_backward(Tensor grad, int top, int left, int height, int width, str mode) -> Tensor");
  m.def("crop(Tensor x, int top, int left, int height, int width, ScalarType dtype) -> Tensor");
  m.def("channel_mix(Tensor y, Tensor g, bool adjoint) -> Tensor");
  m.def("channel_mix_outer(Tensor a, Tensor c, int groups) -> Tensor");
  m.def("padded_deconv2d(Tensor image, int top, int left, int height, int width, str mode, "
        "Tensor k, Tensor? reg, float eps, Tensor thresh) -> Tensor");
  m.def("dct_solve(Tensor image, Tensor filter) -> Tensor");
}

TORCH_LIBRARY_IMPL(deconv_ext, CPU, m) {
  m.impl("spectral_solve", &deconv_ext::spectral_solve);
  m.impl("spectral_solve_adjoint", &deconv_ext::spectral_solve_adjoint);
  m.impl("spectral_solve_", &deconv_ext::spectral_solve_);
  m.impl("spectral_mul", &deconv_ext::spectral_mul);
  m.impl("spectral_solve_backward", &deconv_ext::spectral_solve_backward);
  m.impl("spectral_mul_grad_k", &deconv_ext::spectral_mul_grad_k);
  m.impl("deconv2d", &deconv_ext::deconv2d);
  m.impl("deconv2d_grad_k", &deconv_ext::deconv2d_grad_k);
  m.impl("filter2d", &deconv_ext::filter2d);
  m.impl("filter2d_grad_k", &deconv_ext::filter2d_grad_k);
  m.impl("kernel_spectrum", &deconv_ext::kernel_spectrum);
  m.impl("kernel_spectrum_backward", &deconv_ext::kernel_spectrum_backward);
  m.impl("spectral_power", &deconv_ext::spectral_power);
  m.impl("spectral_power_backward", &deconv_ext::spectral_power_backward);
  m.impl("pad", &deconv_ext::pad);
  m.impl("pad_backward", &deconv_ext::pad_backward);
  m.impl("crop", &deconv_ext::crop);
  m.impl("channel_mix", &deconv_ext::channel_mix);
  m.impl("channel_mix_outer", &deconv_ext::channel_mix_outer);
  m.impl("padded_deconv2d", &deconv_ext::padded_deconv2d);
  m.impl("dct_solve", &deconv_ext::dct_solve);
}
