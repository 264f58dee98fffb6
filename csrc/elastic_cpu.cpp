// CPU backend: the functors of elastic.h in an OpenMP `parallel for simd` loop.
#include <cstring>

#include "elastic.h"
#include "ops.h"

namespace mpisgd {
namespace {

// bfloat16 storage: the upper half of a float32's bits.
struct BF16 {
  uint16_t bits;
};

#ifdef __FLT16_MANT_DIG__  // the compiler has _Float16 (GCC >= 12, Clang on x86-64)
using F16 = _Float16;
#else
using F16 = void;          // float16 tensors take the torch path
#endif

}  // namespace

// bfloat16 <-> float by bit manipulation, rounding to nearest even; NaN stays NaN.
template <>
struct Num<BF16> {
  using acc = float;
  static MPISGD_INLINE float load(BF16 v) {
    const uint32_t u = uint32_t(v.bits) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
  static MPISGD_INLINE BF16 store(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return BF16{uint16_t((u >> 16) | 0x40u)};
    return BF16{uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
  }
};

#ifdef __FLT16_MANT_DIG__
template <>
struct Num<_Float16> {
  using acc = float;
  static MPISGD_INLINE float load(_Float16 v) { return float(v); }
  static MPISGD_INLINE _Float16 store(float f) { return _Float16(f); }
};
#endif

namespace {

// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kParallelMin = 32768;

// Runs f(i) for i in [0, n) on `threads` OpenMP threads, vectorised.
struct Loop {
  int64_t n;
  int threads;

  template <class F>
  void operator()(F f) const {
    const int64_t n_ = n;
    const int t = threads > 1 ? threads : 1;
    (void)t;  // unused without OpenMP
    // `if (parallel: ...)`: a bare `if` would switch off `simd` too (OpenMP 5) for small arrays.
#pragma omp parallel for simd num_threads(t) if (parallel : n_ >= kParallelMin && t > 1) schedule(static) firstprivate(f)
    for (int64_t i = 0; i < n_; ++i) f(i);
  }
};

}  // namespace

bool openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

bool cpu_supports(int dtype) { return supports<F16, BF16>(dtype); }

void elastic_cpu(void* x, const void* c, void* out, int64_t n, double alpha, bool accumulate,
                 int dtype, int threads) {
  dispatch<F16, BF16>("CPU", dtype, [&](auto t) {
    elastic<decltype(t)>(Loop{n, threads}, x, c, out, alpha, accumulate);
  });
}

void eamsgd_step_cpu(void* y, void* v, const void* g, const void* c, void* out, int64_t n,
                     double lr, double delta, double alpha, int dtype, int threads) {
  dispatch<F16, BF16>("CPU", dtype, [&](auto t) {
    eamsgd_step<decltype(t)>(Loop{n, threads}, y, v, g, c, out, lr, delta, alpha);
  });
}

void triad_cpu(void* a, const void* b, const void* c, int64_t n, double s, int dtype, int threads) {
  dispatch<F16, BF16>("CPU", dtype, [&](auto t) { triad<decltype(t)>(Loop{n, threads}, a, b, c, s); });
}

}  // namespace mpisgd
