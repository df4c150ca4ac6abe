// The search for eps of a parameter-choice rule over binned sums (see rule_search.cpp).
#pragma once
#include <ATen/ATen.h>

#include <tuple>

namespace deconv_ext {

// The rule's log eps per system, as deconv_ext/maths/parameter_choice.py's
// _search (and _root for "discrepancy"): a grid over each system's log eps
// range on bins `coarsen` times wider, then nested grids of `refine_points`
// on the bins themselves.
//   q, wa, wy, wr, wry: float64 (B, nb), the binned sums (_Spectra)
//   res_extra, dof_extra: float64 (B,)
//   s2: float64 (B,) noise variance (rules "upre", "risk", "discrepancy"), else undefined
//   rule: "gcv", "upre", "risk", "discrepancy" or "lcurve"
//   eps_lo, eps_hi: the search range in eps, or 0, 0 for the range the spectra imply
// Returns (log eps (B,), objective (B,), flat (B,) bool, clipped (B,) bool).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rule_search(
    const at::Tensor& q, const at::Tensor& wa, const at::Tensor& wy, const at::Tensor& wr,
    const at::Tensor& wry, const at::Tensor& res_extra, const at::Tensor& dof_extra,
    double n_data, const c10::optional<at::Tensor>& s2, c10::string_view rule, double tau,
    double eps_lo, double eps_hi, double rtol, int64_t coarsen, double points_per_decade,
    double range_decades, int64_t refine_points);

// argmin over log eps of the padded path's edge-aware risk per system, with
// its value (parameter_choice.minimise_edge_risk): a grid over the range the
// spectra imply on bins `coarsen` times wider, then the nested refinement.
//   q, wa, wr, wry: float64 (B, nb), the seam power's binned sums
//   prior_weight: float64 (B, nb); scale, s2: float64 (B,)
//   dc_q, dc_power: float64 (B, planes)
// Returns (log eps (B,), risk (B,)).
std::tuple<at::Tensor, at::Tensor> edge_risk_search(
    const at::Tensor& q, const at::Tensor& wa, const at::Tensor& wr, const at::Tensor& wry,
    const at::Tensor& prior_weight, const at::Tensor& scale, const at::Tensor& dc_q,
    const at::Tensor& dc_power, const at::Tensor& s2, double rho, double rtol, int64_t coarsen,
    double points_per_decade, double range_decades, int64_t refine_points);

}  // namespace deconv_ext
