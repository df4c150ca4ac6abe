// The search for a parameter-choice rule's eps over binned sums, on the CPU.
//
// The same algorithm as deconv_ext/maths/parameter_choice.py (_search,
// _refine, _root, _objective), which stays the reference and runs on other
// devices: there each of its ~170 small tensor operations costs a few
// microseconds of Python and dispatch, 1.8 ms per 512^2 image, twice the
// solve itself. Here one call evaluates every objective in plain loops.
//
// Each system (row) is independent except for two shared sizes, which the
// reference takes over all rows and so does this: the number of grid
// points, and the number of refinement levels (rows refine in lock step).
#include "rule_search.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "checks.h"

// The objectives' loops compiled for AVX-512, AVX2 and baseline x86-64, picked
// at load time (as the fused solve's; the build is portable, not -march=native).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DECONV_RULE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DECONV_RULE_CLONES
#endif

namespace deconv_ext {
namespace {

enum class Rule { Gcv, Upre, Risk, Discrepancy, Lcurve };

Rule parse_rule(c10::string_view rule) {
  if (rule == "gcv") return Rule::Gcv;
  if (rule == "upre") return Rule::Upre;
  if (rule == "risk") return Rule::Risk;
  if (rule == "discrepancy") return Rule::Discrepancy;
  if (rule == "lcurve") return Rule::Lcurve;
  TORCH_CHECK_VALUE(false, "rule_search: rule must be one of 'gcv', 'upre', 'risk', "
                    "'discrepancy', 'lcurve', got '", std::string(rule), "'");
}

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kTiny = 1e-300;
const double kLn10 = std::log(10.0);

// One system's bins (pointers into (nb,) rows) and its constants.
struct Row {
  const double *q, *wa, *wy, *wr, *wry;
  int64_t nb;
  double res_extra, dof_extra, s2;
};

// The objective at log eps t (parameter_choice._objective / _terms / _risk).
DECONV_RULE_CLONES
double objective(const Row& r, double t, Rule rule, double n_data, double tau) {
  const double e = std::exp(t);
  const int64_t n = r.nb;
  if (rule == Rule::Risk) {
    double a = 0, b = 0;
    const double two_s2 = 2 * r.s2;
#pragma omp simd reduction(+ : a, b)
    for (int64_t i = 0; i < n; ++i) {
      const double d = 1.0 / (r.q[i] + e);
      a += d * (two_s2 * r.wr[i] - r.wry[i]);
      b += e * d * d * r.wry[i];
    }
    return a - b;
  }
  double res = 0, dof = 0, semi = 0;
#pragma omp simd reduction(+ : res, dof, semi)
  for (int64_t i = 0; i < n; ++i) {
    const double d = 1.0 / (r.q[i] + e);
    const double g = e * d, f = 1.0 - g;
    res += g * g * r.wy[i];
    dof += g * r.wa[i];
    semi += f * d * r.wy[i];  // ||R x||^2 = sum c |Y|^2 q / (q + eps)^2 / N
  }
  res += r.res_extra;
  dof += r.dof_extra;
  switch (rule) {
    case Rule::Gcv:
      return dof > 0 ? n_data * res / std::max(dof * dof, kTiny) : kInf;
    case Rule::Upre:
      return res - 2 * r.s2 * dof;
    case Rule::Discrepancy:
      return res - tau * n_data * r.s2;
    default:
      break;
  }
  // L-curve: minus the curvature of (log ||r||^2, log ||R x||^2) in t.
  double res1 = 0, res2 = 0, semi1 = 0, semi2 = 0;
#pragma omp simd reduction(+ : res1, res2, semi1, semi2)
  for (int64_t i = 0; i < n; ++i) {
    const double d = 1.0 / (r.q[i] + e);
    const double g = e * d, f = 1.0 - g;
    const double fg2 = f * g * g, qg = f * d * g;
    res1 += fg2 * r.wy[i];
    res2 += fg2 * (2 * f - g) * r.wy[i];
    semi1 += qg * r.wy[i];
    semi2 += qg * (f - 2 * g) * r.wy[i];
  }
  res1 *= 2;
  res2 *= 2;
  semi1 *= -2;
  semi2 *= -2;
  const double Rs = std::max(res, kTiny), Ss = std::max(semi, kTiny);
  const double r1 = res1 / Rs, s1 = semi1 / Ss;
  const double r2 = res2 / Rs - r1 * r1, s2 = semi2 / Ss - s1 * s1;
  const double kappa = (r1 * s2 - r2 * s1) / std::pow(std::max(r1 * r1 + s1 * s1, kTiny), 1.5);
  const bool ok = res > kTiny && semi > kTiny && std::isfinite(kappa);
  return ok ? -kappa : kInf;
}

// A non-finite objective value never wins a minimum.
double finite_or_inf(double v) { return std::isfinite(v) ? v : kInf; }

// torch.linspace(0, 1, n) in float64, computed as torch computes it.
std::vector<double> linspace01(int64_t n) {
  std::vector<double> u(n);
  if (n == 1) {
    u[0] = 0;
    return u;
  }
  const double step = 1.0 / static_cast<double>(n - 1);
  const int64_t half = n / 2;
  for (int64_t i = 0; i < n; ++i) {
    u[i] = i < half ? step * i : 1.0 - step * (n - i - 1);
  }
  return u;
}

int64_t argmin_first(const double* v, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (v[i] < v[best]) best = i;
  }
  return best;
}

// parameter_choice._flat over one row of grid values.
bool flat_row(const double* v, int64_t n) {
  bool any = false;
  double big = 0, vmax = -kInf, vmin = kInf;
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(v[i])) continue;
    any = true;
    big = std::max(big, std::abs(v[i]));
    vmax = std::max(vmax, v[i]);
    vmin = std::min(vmin, v[i]);
  }
  return !any || !(vmax - vmin > 1e-10 * big);
}

// Bins `factor` times wider (parameter_choice._coarsen): the geometric centre
// of each group of `factor` q values, the sums of each weight array. Returns
// false (nothing written) when the bins do not split into such groups.
bool coarsen_bins(const double* q, std::initializer_list<const double*> weights, int64_t nb,
                  int64_t factor, std::vector<double>& q_out,
                  std::vector<std::vector<double>>& w_out) {
  if (factor <= 1 || nb % factor != 0) return false;
  const int64_t m = nb / factor;
  q_out.assign(m, 0.0);
  w_out.assign(weights.size(), std::vector<double>(m, 0.0));
  for (int64_t j = 0; j < m; ++j) {
    double lq = 0;
    for (int64_t i = j * factor; i < (j + 1) * factor; ++i) lq += std::log(q[i]);
    q_out[j] = std::exp(lq / static_cast<double>(factor));
  }
  size_t k = 0;
  for (const double* w : weights) {
    for (int64_t i = 0; i < nb; ++i) w_out[k][i / factor] += w[i];
    ++k;
  }
  return true;
}

// A row on wider bins with the storage its pointers point into (the row
// itself when it cannot be widened): Widened<Row> for the rules,
// Widened<EdgeRow> for the edge risk.
template <typename RowT>
struct Widened {
  std::vector<double> q;
  std::vector<std::vector<double>> w;
  RowT row;
};

Widened<Row> coarsen(const Row& r, int64_t factor) {
  Widened<Row> c;
  c.row = r;
  if (coarsen_bins(r.q, {r.wa, r.wy, r.wr, r.wry}, r.nb, factor, c.q, c.w)) {
    c.row = {c.q.data(), c.w[0].data(), c.w[1].data(), c.w[2].data(), c.w[3].data(),
             static_cast<int64_t>(c.q.size()), r.res_extra, r.dof_extra, r.s2};
  }
  return c;
}

// parameter_choice._log_range for one row.
void log_range(const Row& r, double range_decades, double& lo, double& hi) {
  double qmax = -kInf, qmin = kInf;
  for (int64_t i = 0; i < r.nb; ++i) {
    if (!(r.wa[i] > 0)) continue;
    qmax = std::max(qmax, r.q[i]);
    qmin = std::min(qmin, r.q[i]);
  }
  if (!(std::isfinite(qmax) && std::isfinite(qmin))) qmax = qmin = 1.0;
  // Two decades beyond the extreme ratios no objective moves any more.
  hi = std::log(qmax) + 2 * kLn10;
  lo = std::max(std::log(qmin) - 2 * kLn10, hi - range_decades * kLn10);
  if (hi - lo < kLn10) {  // a range of (almost) one point: a decade each way
    lo -= kLn10;
    hi += kLn10;
  }
}

// The grid size shared by all rows (parameter_choice._grid): from the widest range.
int64_t grid_size(const std::vector<double>& lo, const std::vector<double>& hi,
                  double points_per_decade) {
  double decades = 0;
  for (size_t b = 0; b < lo.size(); ++b) decades = std::max(decades, (hi[b] - lo[b]) / kLn10);
  return std::max<int64_t>(8, static_cast<int64_t>(std::ceil(decades * points_per_decade)) + 1);
}

// Nested grids of R points on [a, b] per row, all rows in lock step, until
// the widest spacing is below log(1 + rtol) (parameter_choice._refine).
// fun(row, t) is the objective (non-finite values never win). Writes the
// argmin and its value per row into t_best, f_best.
template <typename F>
void refine(std::vector<double> a, std::vector<double> b, int64_t R, double rtol, const F& fun,
            std::vector<double>& t_best, std::vector<double>& f_best) {
  const int64_t B = static_cast<int64_t>(a.size());
  const std::vector<double> u = linspace01(R);
  const double target = std::log1p(rtol);
  std::vector<double> x(B * R), v(B * R);
  std::vector<int64_t> ir(B);
  t_best.assign(B, 0.0);
  f_best.assign(B, 0.0);
  while (true) {
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t r = b0; r < b1; ++r) {
        for (int64_t i = 0; i < R; ++i) {
          x[r * R + i] = a[r] + (b[r] - a[r]) * u[i];
          v[r * R + i] = finite_or_inf(fun(r, x[r * R + i]));
        }
        ir[r] = argmin_first(v.data() + r * R, R);
      }
    });
    double spacing = 0;
    for (int64_t r = 0; r < B; ++r) {
      spacing = std::max(spacing, (b[r] - a[r]) / static_cast<double>(R - 1));
    }
    if (spacing <= target) break;
    for (int64_t r = 0; r < B; ++r) {
      a[r] = x[r * R + std::max<int64_t>(ir[r] - 1, 0)];
      b[r] = x[r * R + std::min(ir[r] + 1, R - 1)];
    }
  }
  for (int64_t r = 0; r < B; ++r) {
    t_best[r] = x[r * R + ir[r]];
    f_best[r] = v[r * R + ir[r]];
  }
}

void check_rows(const char* op, const char* name, const at::Tensor& t, int64_t B, int64_t nb) {
  check_dtype(op, operand(name, t), at::kDouble);
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == B && t.size(1) == nb, op, ": ", name,
                    " of shape ", t.sizes(), " must be (", B, ", ", nb, ")");
}

void check_vector(const char* op, const char* name, const at::Tensor& t, int64_t B) {
  check_dtype(op, operand(name, t), at::kDouble);
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == B, op, ": ", name, " of shape ", t.sizes(),
                    " must be (", B, ",)");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rule_search(
    const at::Tensor& q, const at::Tensor& wa, const at::Tensor& wy, const at::Tensor& wr,
    const at::Tensor& wry, const at::Tensor& res_extra, const at::Tensor& dof_extra,
    double n_data, const c10::optional<at::Tensor>& s2, c10::string_view rule_name, double tau,
    double eps_lo, double eps_hi, double rtol, int64_t coarsen_by, double points_per_decade,
    double range_decades, int64_t refine_points) {
  check_cpu_operands("rule_search", {operand("q", q), operand("wa", wa), operand("wy", wy),
                                     operand("wr", wr), operand("wry", wry),
                                     operand("res_extra", res_extra),
                                     operand("dof_extra", dof_extra), operand("s2", s2)});
  const Rule rule = parse_rule(rule_name);
  TORCH_CHECK_VALUE(q.dim() == 2 && q.size(1) > 0, "rule_search: q must be (B, nb), got ",
                    q.sizes());
  const int64_t B = q.size(0), nb = q.size(1);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"q", &q},
                                {"wa", &wa}, {"wy", &wy}, {"wr", &wr}, {"wry", &wry}}) {
    check_rows("rule_search", name, *t, B, nb);
  }
  check_vector("rule_search", "res_extra", res_extra, B);
  check_vector("rule_search", "dof_extra", dof_extra, B);
  const bool needs_noise = rule == Rule::Upre || rule == Rule::Risk || rule == Rule::Discrepancy;
  const bool has_s2 = s2.has_value() && s2->defined();
  TORCH_CHECK_VALUE(has_s2 || !needs_noise, "rule_search: rule '", std::string(rule_name),
                    "' needs s2, the noise variance");
  if (has_s2) check_vector("rule_search", "s2", *s2, B);
  TORCH_CHECK_VALUE(refine_points >= 3 && points_per_decade > 0 && rtol > 0 &&
                        range_decades > 0 && coarsen_by >= 1,
                    "rule_search: refine_points >= 3, coarsen >= 1 and positive "
                    "points_per_decade, rtol and range_decades are needed");
  const bool given_range = eps_lo > 0 && eps_hi > 0;
  TORCH_CHECK_VALUE(given_range || (eps_lo == 0 && eps_hi == 0),
                    "rule_search: eps_lo, eps_hi must both be > 0 (a range) or both 0, got ",
                    eps_lo, ", ", eps_hi);

  auto f64 = q.options().dtype(at::kDouble);
  at::Tensor t_out = at::empty({B}, f64), obj_out = at::empty({B}, f64);
  at::Tensor flat_out = at::zeros({B}, q.options().dtype(at::kBool));
  at::Tensor clip_out = at::zeros({B}, q.options().dtype(at::kBool));
  if (B == 0) return {t_out, obj_out, flat_out, clip_out};

  const at::Tensor qc = q.contiguous(), ac = wa.contiguous(), yc = wy.contiguous(),
                   rc = wr.contiguous(), ryc = wry.contiguous();
  const at::Tensor rec = res_extra.contiguous(), dec = dof_extra.contiguous();
  const at::Tensor s2c = has_s2 ? s2->contiguous() : at::Tensor();
  std::vector<Row> rows(B);
  for (int64_t b = 0; b < B; ++b) {
    rows[b] = {qc.const_data_ptr<double>() + b * nb, ac.const_data_ptr<double>() + b * nb,
               yc.const_data_ptr<double>() + b * nb, rc.const_data_ptr<double>() + b * nb,
               ryc.const_data_ptr<double>() + b * nb, nb, rec.const_data_ptr<double>()[b],
               dec.const_data_ptr<double>()[b], has_s2 ? s2c.const_data_ptr<double>()[b] : 0.0};
  }

  std::vector<double> lo(B), hi(B);
  for (int64_t b = 0; b < B; ++b) {
    if (given_range) {
      lo[b] = std::log(eps_lo);
      hi[b] = std::log(eps_hi);
    } else {
      log_range(rows[b], range_decades, lo[b], hi[b]);
    }
  }
  const int64_t G = grid_size(lo, hi, points_per_decade);
  const std::vector<double> ug = linspace01(G), ur = linspace01(refine_points);
  std::vector<double> tgrid(B * G), vals(B * G);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const Widened<Row> c = coarsen(rows[b], coarsen_by);
      for (int64_t j = 0; j < G; ++j) {
        const double t = lo[b] + (hi[b] - lo[b]) * ug[j];
        tgrid[b * G + j] = t;
        vals[b * G + j] = objective(c.row, t, rule, n_data, tau);
      }
    }
  });

  double* t_res = t_out.mutable_data_ptr<double>();
  double* o_res = obj_out.mutable_data_ptr<double>();
  bool* flat = flat_out.mutable_data_ptr<bool>();
  bool* clipped = clip_out.mutable_data_ptr<bool>();
  const int64_t R = refine_points;
  const double target_width = std::log1p(rtol);
  std::vector<double> a(B), bb(B), x(B * R);
  std::vector<double> energy(B, 0.0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < nb; ++i) energy[b] += rows[b].wy[i];
  }

  if (rule == Rule::Discrepancy) {
    // The first grid point at or above the target; the root of the
    // increasing residual is in (t[j-1], t[j]] (parameter_choice._root).
    std::vector<int64_t> j(B);
    for (int64_t b = 0; b < B; ++b) {
      j[b] = G;
      for (int64_t i = 0; i < G; ++i) {
        if (vals[b * G + i] >= 0) {
          j[b] = i;
          break;
        }
      }
      a[b] = tgrid[b * G + std::min(std::max<int64_t>(j[b] - 1, 0), G - 1)];
      bb[b] = tgrid[b * G + std::min(j[b], G - 1)];
    }
    while (true) {
      double widest = 0;
      for (int64_t b = 0; b < B; ++b) widest = std::max(widest, bb[b] - a[b]);
      if (!(widest > target_width)) break;
      at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          int64_t k = R - 1;  // b itself is at or above the target (or the range's end)
          for (int64_t i = 0; i < R; ++i) {
            x[b * R + i] = a[b] + (bb[b] - a[b]) * ur[i];
          }
          for (int64_t i = 0; i < R - 1; ++i) {
            if (objective(rows[b], x[b * R + i], rule, n_data, tau) >= 0) {
              k = i;
              break;
            }
          }
          a[b] = x[b * R + std::max<int64_t>(k - 1, 0)];
          bb[b] = x[b * R + k];
        }
      });
    }
    for (int64_t b = 0; b < B; ++b) {
      const bool low_end = j[b] == 0, high_end = j[b] == G;
      const double tr = low_end ? tgrid[b * G] : high_end ? tgrid[b * G + G - 1] : bb[b];
      const double target = tau * n_data * rows[b].s2;
      const double res = objective(rows[b], tr, rule, n_data, tau) + target;
      t_res[b] = tr;
      o_res[b] = res / (target > 0 ? target : 1.0);
      std::vector<double> shifted(vals.begin() + b * G, vals.begin() + (b + 1) * G);
      for (double& s : shifted) s += target;
      flat[b] = !(energy[b] > 0) || flat_row(shifted.data(), G);
      clipped[b] = (low_end || high_end) && !flat[b];
    }
    return {t_out, obj_out, flat_out, clip_out};
  }

  std::vector<int64_t> ig(B);
  for (int64_t b = 0; b < B; ++b) {
    double* row = vals.data() + b * G;
    flat[b] = flat_row(row, G) || !(energy[b] > 0);
    for (int64_t i = 0; i < G; ++i) row[i] = finite_or_inf(row[i]);
    ig[b] = argmin_first(row, G);
    a[b] = tgrid[b * G + std::max<int64_t>(ig[b] - 1, 0)];
    bb[b] = tgrid[b * G + std::min(ig[b] + 1, G - 1)];
  }
  // Nested grids of R points, all rows in lock step (parameter_choice._refine).
  auto fine = [&](int64_t b, double t) { return objective(rows[b], t, rule, n_data, tau); };
  std::vector<double> tbest, fbest;
  refine(a, bb, R, rtol, fine, tbest, fbest);
  for (int64_t b = 0; b < B; ++b) {
    double tb = tbest[b];
    // Keep the grid point if the refinement did not improve on it (a minimum
    // at the end of the range).
    const double tg = tgrid[b * G + ig[b]];
    if (!(fbest[b] <= finite_or_inf(fine(b, tg)))) tb = tg;
    t_res[b] = tb;
    o_res[b] = objective(rows[b], tb, rule, n_data, tau);
  }
  return {t_out, obj_out, flat_out, clip_out};
}

namespace {

// One system of the padded path's edge-aware risk (parameter_choice._edge_risk).
struct EdgeRow {
  const double *q, *wr, *wry, *pw, *dc_q, *dc_pow;
  int64_t nb, planes;
  double scale, s2;
};

DECONV_RULE_CLONES
double edge_risk(const EdgeRow& r, double t, double rho) {
  const double e = std::exp(t);
  double sig = 0, noise = 0, seam = 0;
#pragma omp simd reduction(+ : sig, noise, seam)
  for (int64_t i = 0; i < r.nb; ++i) {
    const double d = 1.0 / (r.q[i] + e);
    const double g = e * d;
    const double amp = r.q[i] * d * d;  // f^2 / |K|^2 times |R|^2
    sig += g * g * r.pw[i];
    noise += amp * r.wr[i];
    seam += amp * r.wry[i];
  }
  double out = r.scale * sig + r.s2 * noise;
  for (int64_t p = 0; p < r.planes; ++p) {
    if (!std::isfinite(r.dc_q[p])) continue;  // DC kept: no DC bias
    const double g = e / (r.dc_q[p] + e);
    out += g * g * r.dc_pow[p];
  }
  if (rho != 0) out += rho * seam;
  return out;
}

Widened<EdgeRow> coarsen_edge(const EdgeRow& r, int64_t factor) {
  Widened<EdgeRow> c;
  c.row = r;
  if (coarsen_bins(r.q, {r.wr, r.wry, r.pw}, r.nb, factor, c.q, c.w)) {
    c.row.q = c.q.data();
    c.row.wr = c.w[0].data();
    c.row.wry = c.w[1].data();
    c.row.pw = c.w[2].data();
    c.row.nb = static_cast<int64_t>(c.q.size());
  }
  return c;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> edge_risk_search(
    const at::Tensor& q, const at::Tensor& wa, const at::Tensor& wr, const at::Tensor& wry,
    const at::Tensor& prior_weight, const at::Tensor& scale, const at::Tensor& dc_q,
    const at::Tensor& dc_power, const at::Tensor& s2, double rho, double rtol,
    int64_t coarsen_by, double points_per_decade, double range_decades, int64_t refine_points) {
  check_cpu_operands("edge_risk_search",
                     {operand("q", q), operand("wa", wa), operand("wr", wr), operand("wry", wry),
                      operand("prior_weight", prior_weight),
                      operand("scale", scale), operand("dc_q", dc_q),
                      operand("dc_power", dc_power), operand("s2", s2)});
  TORCH_CHECK_VALUE(q.dim() == 2 && q.size(1) > 0, "edge_risk_search: q must be (B, nb), got ",
                    q.sizes());
  const int64_t B = q.size(0), nb = q.size(1);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"q", &q}, {"wa", &wa},
                                {"wr", &wr}, {"wry", &wry},
                                {"prior_weight", &prior_weight}}) {
    check_rows("edge_risk_search", name, *t, B, nb);
  }
  check_vector("edge_risk_search", "scale", scale, B);
  check_vector("edge_risk_search", "s2", s2, B);
  TORCH_CHECK_VALUE(dc_q.dim() == 2 && dc_q.size(0) == B && dc_power.sizes() == dc_q.sizes(),
                    "edge_risk_search: dc_q and dc_power must be (B, planes), got ", dc_q.sizes(),
                    " and ", dc_power.sizes());
  check_dtype("edge_risk_search", operand("dc_q", dc_q), at::kDouble);
  check_dtype("edge_risk_search", operand("dc_power", dc_power), at::kDouble);
  TORCH_CHECK_VALUE(refine_points >= 3 && points_per_decade > 0 && rtol > 0 && range_decades > 0 &&
                        coarsen_by >= 1,
                    "edge_risk_search: refine_points >= 3, coarsen >= 1 and positive "
                    "points_per_decade, rtol and range_decades are needed");
  auto f64 = q.options().dtype(at::kDouble);
  at::Tensor t_out = at::empty({B}, f64), f_out = at::empty({B}, f64);
  if (B == 0) return {t_out, f_out};
  const at::Tensor qc = q.contiguous(), ac = wa.contiguous(), rc = wr.contiguous(),
                   ryc = wry.contiguous(), pc = prior_weight.contiguous(),
                   sc = scale.contiguous(), s2c = s2.contiguous(), dqc = dc_q.contiguous(),
                   dpc = dc_power.contiguous();
  const int64_t P = dc_q.size(1);
  std::vector<EdgeRow> rows(B);
  std::vector<double> lo(B), hi(B);
  for (int64_t b = 0; b < B; ++b) {
    rows[b] = {qc.const_data_ptr<double>() + b * nb, rc.const_data_ptr<double>() + b * nb,
               ryc.const_data_ptr<double>() + b * nb, pc.const_data_ptr<double>() + b * nb,
               dqc.const_data_ptr<double>() + b * P, dpc.const_data_ptr<double>() + b * P, nb, P,
               sc.const_data_ptr<double>()[b], s2c.const_data_ptr<double>()[b]};
    // The range where the filter factors move (parameter_choice._log_range).
    const Row range_row{rows[b].q, ac.const_data_ptr<double>() + b * nb, nullptr, nullptr,
                        nullptr, nb, 0.0, 0.0, 0.0};
    log_range(range_row, range_decades, lo[b], hi[b]);
  }
  auto fun = [&](int64_t b, double t) { return edge_risk(rows[b], t, rho); };
  // The grid stage on bins `coarsen_by` times wider (minimise_edge_risk).
  std::vector<Widened<EdgeRow>> wide(B);
  for (int64_t b = 0; b < B; ++b) wide[b] = coarsen_edge(rows[b], coarsen_by);
  auto grid_fun = [&](int64_t b, double t) { return edge_risk(wide[b].row, t, rho); };
  // parameter_choice._minimise: a grid, then the nested refinement.
  const int64_t G = grid_size(lo, hi, points_per_decade);
  const std::vector<double> ug = linspace01(G);
  std::vector<double> a(B), bb(B), tg(B), fg(B);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> t(G), v(G);
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t j = 0; j < G; ++j) {
        t[j] = lo[b] + (hi[b] - lo[b]) * ug[j];
        v[j] = finite_or_inf(grid_fun(b, t[j]));
      }
      const int64_t i = argmin_first(v.data(), G);
      a[b] = t[std::max<int64_t>(i - 1, 0)];
      bb[b] = t[std::min(i + 1, G - 1)];
      tg[b] = t[i];
      fg[b] = finite_or_inf(fun(b, t[i]));  // the grid point's value on the bins themselves
    }
  });
  std::vector<double> tbest, fbest;
  refine(a, bb, refine_points, rtol, fun, tbest, fbest);
  double* tr = t_out.mutable_data_ptr<double>();
  double* fr = f_out.mutable_data_ptr<double>();
  for (int64_t b = 0; b < B; ++b) {
    const bool better = fbest[b] <= fg[b];
    tr[b] = better ? tbest[b] : tg[b];
    fr[b] = better ? fbest[b] : fg[b];
  }
  return {t_out, f_out};
}

}  // namespace deconv_ext
