// The 2D real FFTs of the pipelines.
//
// Where torch ships MKL (its x86 builds), the transforms call MKL's DFTI
// directly, with descriptors this file keeps. Through at::fft_* the same MKL
// is slower, for two reasons measured on this project's 2-core machine:
//
// * torch keeps very few MKL plans. A process that runs four FFT shapes in
//   turn replans on every call: rfft2 of 512x512 float32 went from 0.20 ms
//   to 0.35 ms, a row rfft from 0.09 to 0.29 ms. A deconvolution pipeline
//   plus its caller's own FFTs easily has four.
// * torch's irfft2 clones its input and runs MKL's 2D c2r, which took
//   0.31 ms at 512x512; the c2c pass over the columns (in place) and the c2r
//   pass over the rows here take 0.19 ms together.
//
// With MKL, planes under 2^20 elements take one 2D descriptor per direction
// (batched over the planes); larger ones two 1D passes: forward rows r2c
// then columns c2c in place, inverse columns c2c in place then rows c2r
// (2048x2048: the 2D forward took 0.43 of torch's round trip, the two passes
// 0.28; and no plane-sized MKL workspace). For small batched planes the 2D
// inverse measured 0.39-0.45 of the round trip against 0.53-0.68 for the
// passes, whose per-plane column calls each pay a thread fork/join. Without
// MKL (other builds of torch): torch.fft, with a large plane's inverse done
// in blocks in place.
#include "fft.h"

#include <atomic>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cstdlib>
#include <list>
#include <memory>
#include <mutex>
#include <new>

#ifdef DECONV_EXT_MKL_DFTI
#include <mkl_dfti.h>
#if !defined(_WIN32)
#include <pthread.h>
#endif
#endif

#include "alloc.h"
#include "checks.h"

namespace deconv_ext {
namespace {

// Planes at least this large (complex elements) are inverted in blocks by the
// torch.fft fallback.
constexpr int64_t kLargePlane = int64_t(1) << 17;
constexpr int64_t kBlockElements = int64_t(1) << 17;

// The fallback inverse. torch's irfft2 runs a c2c pass over dim -2 into a
// fresh buffer and clones that for the c2r pass (MKL's c2r destroys its
// input): two image-sized allocations. For a large plane the c2c pass runs
// here in place, a block of columns at a time, and the c2r pass a block of
// rows at a time into the output.
at::Tensor irfft2_torch(at::Tensor X, int64_t w) {
  const int64_t h = X.size(-2), wf = X.size(-1);
  if (h * wf < kLargePlane) return at::fft_irfft2(X, at::IntArrayRef({h, w}));
  if (!X.is_contiguous()) X = X.contiguous();
  const int64_t cols = std::max<int64_t>(1, kBlockElements / h);
  for (int64_t c0 = 0; c0 < wf; c0 += cols) {
    at::Tensor block = X.narrow(-1, c0, std::min(cols, wf - c0));
    block.copy_(at::fft_ifft(block, c10::nullopt, -2));  // 1/H of the 1/(HW)
  }
  std::vector<int64_t> shape(X.sizes().begin(), X.sizes().end());
  shape.back() = w;
  at::Tensor out = empty_large(shape, X.options().dtype(c10::toRealValueType(X.scalar_type())));
  const int64_t rows = std::max<int64_t>(1, kBlockElements / wf);
  for (int64_t r0 = 0; r0 < h; r0 += rows) {
    const int64_t n = std::min(rows, h - r0);
    out.narrow(-2, r0, n).copy_(at::fft_irfft(X.narrow(-2, r0, n), w, -1));  // 1/W
  }
  return out;
}

#ifdef DECONV_EXT_MKL_DFTI

// Planes of at least this many elements are transformed as rows and columns
// rather than by one 2D descriptor.
constexpr int64_t kSeparablePlane = int64_t(1) << 20;

enum class Kind { kForward2d, kBackward2d, kRowsForward, kRowsBackward, kColumns };

struct Key {
  Kind kind;
  bool dbl;
  int64_t batch, h, w;
  int threads;
  bool operator==(const Key& o) const {
    return kind == o.kind && dbl == o.dbl && batch == o.batch && h == o.h && w == o.w &&
           threads == o.threads;
  }
};

// MKL_LONG is a macro of two words ("long int"): no functional casts.
MKL_LONG as_mkl(int64_t v) { return static_cast<MKL_LONG>(v); }

void check(MKL_LONG status, const char* what) {
  TORCH_CHECK(status == 0, "MKL DFTI ", what,
              " failed: ", DftiErrorMessage(status));
}

struct Descriptor {
  DFTI_DESCRIPTOR_HANDLE handle = nullptr;
  ~Descriptor() {
    if (handle != nullptr) DftiFreeDescriptor(&handle);
  }
};
using DescriptorPtr = std::shared_ptr<Descriptor>;

// Committed descriptor for `key`. Committed descriptors are read-only and
// MKL allows concurrent computes with one descriptor, so callers share them;
// the shared_ptr keeps one alive while in use after it left the cache.
DescriptorPtr make_descriptor(const Key& key) {
  auto d = std::make_shared<Descriptor>();
  const DFTI_CONFIG_VALUE precision = key.dbl ? DFTI_DOUBLE : DFTI_SINGLE;
  const int64_t h = key.h, w = key.w, wf = w / 2 + 1;
  switch (key.kind) {
    case Kind::kForward2d:
    case Kind::kBackward2d: {
      const bool forward = key.kind == Kind::kForward2d;
      MKL_LONG sizes[2] = {as_mkl(h), as_mkl(w)};
      check(DftiCreateDescriptor(&d->handle, precision, DFTI_REAL, 2, sizes), "create");
      // Strides and distances of the input: real (forward) or half spectrum.
      MKL_LONG real_strides[3] = {0, as_mkl(w), 1}, half_strides[3] = {0, as_mkl(wf), 1};
      check(DftiSetValue(d->handle, DFTI_INPUT_STRIDES, forward ? real_strides : half_strides),
            "set");
      check(DftiSetValue(d->handle, DFTI_OUTPUT_STRIDES, forward ? half_strides : real_strides),
            "set");
      check(DftiSetValue(d->handle, DFTI_INPUT_DISTANCE, as_mkl(forward ? h * w : h * wf)), "set");
      check(DftiSetValue(d->handle, DFTI_OUTPUT_DISTANCE, as_mkl(forward ? h * wf : h * w)),
            "set");
      check(DftiSetValue(d->handle, DFTI_NUMBER_OF_TRANSFORMS, as_mkl(key.batch)), "set");
      if (!forward)
        check(DftiSetValue(d->handle, DFTI_BACKWARD_SCALE, 1.0 / double(h * w)), "set");
      break;
    }
    case Kind::kRowsForward:
    case Kind::kRowsBackward: {
      const bool forward = key.kind == Kind::kRowsForward;
      check(DftiCreateDescriptor(&d->handle, precision, DFTI_REAL, 1, as_mkl(w)), "create");
      check(DftiSetValue(d->handle, DFTI_NUMBER_OF_TRANSFORMS, as_mkl(key.batch * h)), "set");
      check(DftiSetValue(d->handle, DFTI_INPUT_DISTANCE, as_mkl(forward ? w : wf)), "set");
      check(DftiSetValue(d->handle, DFTI_OUTPUT_DISTANCE, as_mkl(forward ? wf : w)), "set");
      // The whole 1/(HW) of the inverse, applied in the last pass.
      if (!forward)
        check(DftiSetValue(d->handle, DFTI_BACKWARD_SCALE, 1.0 / double(h * w)), "set");
      break;
    }
    case Kind::kColumns: {
      // In place over the W/2+1 columns of one plane.
      check(DftiCreateDescriptor(&d->handle, precision, DFTI_COMPLEX, 1, as_mkl(h)), "create");
      MKL_LONG strides[2] = {0, as_mkl(wf)};
      check(DftiSetValue(d->handle, DFTI_INPUT_STRIDES, strides), "set");
      check(DftiSetValue(d->handle, DFTI_OUTPUT_STRIDES, strides), "set");
      check(DftiSetValue(d->handle, DFTI_NUMBER_OF_TRANSFORMS, as_mkl(wf)), "set");
      check(DftiSetValue(d->handle, DFTI_INPUT_DISTANCE, as_mkl(1)), "set");
      check(DftiSetValue(d->handle, DFTI_OUTPUT_DISTANCE, as_mkl(1)), "set");
      break;
    }
  }
  if (key.kind != Kind::kColumns) {
    check(DftiSetValue(d->handle, DFTI_CONJUGATE_EVEN_STORAGE, DFTI_COMPLEX_COMPLEX), "set");
    check(DftiSetValue(d->handle, DFTI_PLACEMENT, DFTI_NOT_INPLACE), "set");
  }
  // torch's thread setting, as torch.fft uses it.
  check(DftiSetValue(d->handle, DFTI_THREAD_LIMIT, as_mkl(key.threads)), "set");
  check(DftiCommitDescriptor(d->handle), "commit");
  return d;
}

// A least-recently-used set of descriptors. A pipeline call needs at most
// six (two chunk shapes, three kinds), so a few pipelines' worth are kept.
constexpr size_t kMaxDescriptors = 32;

DescriptorPtr descriptor(Kind kind, bool dbl, int64_t batch, int64_t h, int64_t w) {
  // Leaked on purpose: freeing descriptors from a static destructor at exit
  // could run after MKL's own teardown.
  static auto* mutex = new std::mutex();
  static auto* cache = new std::list<std::pair<Key, DescriptorPtr>>();
  // A child forked while another thread held the lock (a DataLoader worker)
  // would wait on it forever: it starts with a fresh, unlocked mutex.
#if !defined(_WIN32)
  static const bool at_fork = [] {
    return pthread_atfork(nullptr, nullptr, [] { new (mutex) std::mutex(); }) == 0;
  }();
  (void)at_fork;
#endif
  const Key key{kind, dbl, batch, h, w, std::max(1, at::get_num_threads())};
  {
    std::lock_guard<std::mutex> guard(*mutex);
    for (auto it = cache->begin(); it != cache->end(); ++it) {
      if (it->first == key) {
        cache->splice(cache->begin(), *cache, it);
        return cache->front().second;
      }
    }
  }
  DescriptorPtr d = make_descriptor(key);  // outside the lock: committing plans takes a while
  std::lock_guard<std::mutex> guard(*mutex);
  cache->emplace_front(key, d);
  if (cache->size() > kMaxDescriptors) cache->pop_back();
  return d;
}

bool use_mkl(const at::Tensor& t, int64_t h, int64_t w) {
  // Planes of one row or column gain nothing from the descriptors here.
  return mkl_dfti_enabled() && t.device().is_cpu() && h >= 2 && w >= 2;
}

// In place over the columns of each plane of a contiguous half spectrum X.
void columns(const at::Tensor& X, bool forward) {
  const int64_t h = X.size(-2), wf = X.size(-1), planes = X.numel() / (h * wf);
  const bool dbl = X.scalar_type() == at::kComplexDouble;
  const DescriptorPtr d = descriptor(Kind::kColumns, dbl, 1, h, 2 * (wf - 1));
  auto* base = static_cast<char*>(X.data_ptr());
  const int64_t plane_bytes = h * wf * int64_t(X.element_size());
  for (int64_t p = 0; p < planes; ++p) {
    void* plane = base + p * plane_bytes;
    check(forward ? DftiComputeForward(d->handle, plane) : DftiComputeBackward(d->handle, plane),
          "compute");
  }
}

// MKL's 2D c2r reads only half of columns 0 and W/2 (W even), which are
// their own mirror images; torch's irfft2 (c2c over the columns, then c2r
// over the rows) reads all of them and keeps the real part, which equals
// transforming the Hermitian part (v[k] + conj(v[-k])) / 2 of those columns.
// Symmetrising them first gives torch's result for any half spectrum, not
// only for the Hermitian-consistent ones a real image has (an O(H) pass).
template <typename Complex>
void hermitian_edges(const at::Tensor& X, int64_t w) {
  const int64_t h = X.size(-2), wf = X.size(-1), planes = X.numel() / (h * wf);
  Complex* base = X.data_ptr<Complex>();
  const int64_t edges[2] = {0, w / 2};
  const int ncols = w % 2 == 0 && w / 2 > 0 ? 2 : 1;
  for (int64_t p = 0; p < planes; ++p) {
    for (int e = 0; e < ncols; ++e) {
      Complex* col = base + p * h * wf + edges[e];
      for (int64_t k = 0; k <= h / 2; ++k) {
        const int64_t k2 = (h - k) % h;
        const Complex sym = (col[k * wf] + std::conj(col[k2 * wf])) * typename Complex::value_type(0.5);
        col[k * wf] = sym;
        col[k2 * wf] = std::conj(sym);
      }
    }
  }
}

at::Tensor rfft2_mkl(const at::Tensor& x_) {
  // Raw data is read below: a lazily negated view must be materialised.
  const at::Tensor x = x_.resolve_neg().contiguous();
  const int64_t h = x.size(-2), w = x.size(-1), wf = w / 2 + 1, batch = x.numel() / (h * w);
  const bool dbl = x.scalar_type() == at::kDouble;
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = wf;
  at::Tensor Y = empty_large(shape, x.options().dtype(c10::toComplexType(x.scalar_type())));
  if (h * w < kSeparablePlane) {
    const DescriptorPtr d = descriptor(Kind::kForward2d, dbl, batch, h, w);
    check(DftiComputeForward(d->handle, x.data_ptr(), Y.data_ptr()), "compute");
    return Y;
  }
  const DescriptorPtr rows = descriptor(Kind::kRowsForward, dbl, batch, h, w);
  check(DftiComputeForward(rows->handle, x.data_ptr(), Y.data_ptr()), "compute");
  columns(Y, true);
  return Y;
}

void irfft2_mkl(at::Tensor X, at::Tensor& out) {
  X = X.resolve_conj().resolve_neg();  // raw data below; views are copied
  if (!X.is_contiguous()) X = X.contiguous();
  const int64_t h = X.size(-2), wf = X.size(-1), w = out.size(-1), batch = X.numel() / (h * wf);
  const bool dbl = X.scalar_type() == at::kComplexDouble;
  if (h * w < kSeparablePlane) {
    AT_DISPATCH_COMPLEX_TYPES(X.scalar_type(), "hermitian_edges",
                              [&] { hermitian_edges<scalar_t>(X, w); });
    const DescriptorPtr d = descriptor(Kind::kBackward2d, dbl, batch, h, w);
    check(DftiComputeBackward(d->handle, X.data_ptr(), out.data_ptr()), "compute");
    return;
  }
  columns(X, false);
  const DescriptorPtr rows = descriptor(Kind::kRowsBackward, dbl, batch, h, w);
  check(DftiComputeBackward(rows->handle, X.data_ptr(), out.data_ptr()), "compute");
}

#endif  // DECONV_EXT_MKL_DFTI

}  // namespace

namespace {
// Set by the Python execution layer from its configuration (DECONV_EXT_MKL):
// the environment is read in one place, deconv_ext/config.py.
std::atomic<bool> mkl_dfti_wanted{true};
}  // namespace

void set_mkl_dfti(bool enabled) { mkl_dfti_wanted.store(enabled); }

bool mkl_dfti_enabled() {
#ifdef DECONV_EXT_MKL_DFTI
  return at::hasMKL() && mkl_dfti_wanted.load();
#else
  return false;
#endif
}

at::Tensor rfft2(const at::Tensor& x) {
  check_cpu_operands("rfft2", {operand("x", x)});
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "rfft2: expected a float32 or float64 tensor, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 2 && x.size(-2) > 0 && x.size(-1) > 0,
              "rfft2: expected (..., H, W) with H, W > 0, got ", x.sizes());
  if (x.numel() == 0) {  // an empty batch: no transform to plan
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = x.size(-1) / 2 + 1;
    return at::zeros(shape, x.options().dtype(c10::toComplexType(x.scalar_type())));
  }
#ifdef DECONV_EXT_MKL_DFTI
  if (use_mkl(x, x.size(-2), x.size(-1))) return rfft2_mkl(x);
#endif
  return at::fft_rfft2(x);
}

void irfft2_into(at::Tensor X, at::Tensor& out) {
  const int64_t width = out.size(-1);
  TORCH_CHECK(X.size(-1) == width / 2 + 1 && X.size(-2) == out.size(-2) &&
                  X.numel() / X.size(-1) == out.numel() / width && out.is_contiguous() &&
                  out.scalar_type() == c10::toRealValueType(X.scalar_type()),
              "irfft2_into: a half spectrum of shape ", X.sizes(), " does not fit an output of "
              "shape ", out.sizes(), " and dtype ", out.scalar_type());
  if (out.numel() == 0) return;
#ifdef DECONV_EXT_MKL_DFTI
  if (use_mkl(X, X.size(-2), width)) {
    irfft2_mkl(X, out);
    return;
  }
#endif
  out.copy_(irfft2_torch(X, width));
}

}  // namespace deconv_ext
