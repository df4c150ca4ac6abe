// The pybind11 module deconv_ext._C: only what the execution layer calls
// without the dispatcher — the eager CPU fast paths (no autograd, ~30 us less
// per call), the in-place solve that the scipy/FFTW pipelines run between
// their FFTs, and the MKL switch. Everything else is reached through
// torch.ops.deconv_ext (csrc/ops.cpp).
//
// A file of its own, including torch's pybind11 casters rather than
// <torch/extension.h>: the pybind11 templates are the slowest part of the
// build, and apart from the op registrations they compile in parallel.
#include <torch/csrc/utils/pybind.h>

#include "checks.h"
#include "dct.h"
#include "fft.h"
#include "pipeline.h"
#include "rule_bins.h"
#include "rule_search.h"
#include "spectral.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "deconv_ext CPU kernels called without the dispatcher (all are also torch.ops.deconv_ext.*)";
  m.def("mkl_dfti_enabled", &deconv_ext::mkl_dfti_enabled,
        "whether the CPU pipelines call MKL's DFTI directly (else torch.fft)");
  m.def("set_mkl_dfti", &deconv_ext::set_mkl_dfti,
        "allow (true, the default) or forbid the pipelines' direct MKL DFTI calls",
        py::arg("enabled"));
  m.def("spectral_solve_", &deconv_ext::spectral_solve_, "in-place fused spectral solve",
        py::arg("y"), py::arg("k"), py::arg("reg"), py::arg("eps"), py::arg("thresh"));
  m.def("deconv2d", &deconv_ext::deconv2d, "rfft2 -> fused solve -> irfft2", py::arg("image"),
        py::arg("k"), py::arg("reg"), py::arg("eps"), py::arg("thresh"), py::arg("adjoint"));
  m.def("filter2d", &deconv_ext::filter2d, "rfft2 -> K or conj(K) -> irfft2", py::arg("x"),
        py::arg("k"), py::arg("conj"));
  m.def("padded_deconv2d", &deconv_ext::padded_deconv2d,
        "crop(deconv2d(pad(image))): the fast padded solve", py::arg("image"), py::arg("top"),
        py::arg("left"), py::arg("height"), py::arg("width"), py::arg("mode"), py::arg("k"),
        py::arg("reg"), py::arg("eps"), py::arg("thresh"));
  // The pipelines' own transforms, for solves that look at the spectrum
  // between them (eps chosen per image): MKL's DFTI where the build has it,
  // and an inverse that overwrites its input instead of cloning it.
  m.def("rfft2", &deconv_ext::rfft2, "rfft2 of a real float32/float64 (..., H, W), unnormalised",
        py::arg("x"));
  m.def(
      "irfft2",
      [](at::Tensor X, int64_t width) {
        deconv_ext::check_cpu_operands("irfft2", {deconv_ext::operand("X", X)});
        TORCH_CHECK(X.dim() >= 2 && width > 0 && X.size(-1) == width / 2 + 1 &&
                        (X.scalar_type() == at::kComplexFloat ||
                         X.scalar_type() == at::kComplexDouble) && X.device().is_cpu(),
                    "irfft2: X must be a complex64/complex128 CPU half spectrum (..., H, ",
                    width / 2 + 1, ") for width ", width, "; got ", X.scalar_type(), " ",
                    X.sizes());
        std::vector<int64_t> shape(X.sizes().begin(), X.sizes().end());
        shape.back() = width;
        at::Tensor out = at::empty(shape, X.options().dtype(c10::toRealValueType(X.scalar_type())));
        deconv_ext::irfft2_into(X, out);
        return out;
      },
      "irfft2 (norm 'backward') of a half spectrum X (..., H, width // 2 + 1); X is overwritten",
      py::arg("X"), py::arg("width"));
  m.def("bin_power", &deconv_ext::bin_power,
        "sum of weights * |Y|^2 per bin of idx, float64: (..., H, Wf) complex -> (..., nbins)",
        py::arg("Y"), py::arg("idx"), py::arg("weights"), py::arg("nbins"));
  m.def("rule_search", &deconv_ext::rule_search,
        "a parameter-choice rule's log eps per system over binned sums (parameter_choice._search)",
        py::arg("q"), py::arg("wa"), py::arg("wy"), py::arg("wr"), py::arg("wry"),
        py::arg("res_extra"), py::arg("dof_extra"), py::arg("n_data"), py::arg("s2"),
        py::arg("rule"), py::arg("tau"), py::arg("eps_lo"), py::arg("eps_hi"), py::arg("rtol"),
        py::arg("coarsen"), py::arg("points_per_decade"), py::arg("range_decades"),
        py::arg("refine_points"));
  m.def("edge_risk_search", &deconv_ext::edge_risk_search,
        "argmin of the padded path's edge-aware risk per system (parameter_choice._minimise)",
        py::arg("q"), py::arg("wa"), py::arg("wr"), py::arg("wry"), py::arg("prior_weight"),
        py::arg("scale"), py::arg("dc_q"), py::arg("dc_power"), py::arg("s2"), py::arg("rho"),
        py::arg("rtol"), py::arg("coarsen"),
        py::arg("points_per_decade"), py::arg("range_decades"), py::arg("refine_points"));
  m.def("dct_solve", &deconv_ext::dct_solve,
        "idctn(filter * dctn(image, norm='ortho'), norm='ortho') over the last two dims",
        py::arg("image"), py::arg("filter"));
}
