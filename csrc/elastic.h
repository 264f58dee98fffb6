// Element math of the fused elastic-averaging kernels, shared by the CPU and
// CUDA backends (the math and the paper are in mpisgd/ops.py).
//
// Each functor updates element i of flat arrays of storage type T. It loads
// everything it reads before it stores anything, so `out` may be `c` itself;
// it computes in Num<T>::acc (double for double, float otherwise) and rounds
// once per stored value. A backend runs a functor over [0, n) with its own
// executor `run(functor)` (an OpenMP loop, a grid-stride kernel) and
// specialises Num for its 16-bit types.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "ops.h"

#if defined(__CUDACC__)
#define MPISGD_INLINE __host__ __device__ __forceinline__
#else
#define MPISGD_INLINE inline __attribute__((always_inline))
#endif

namespace mpisgd {

// Storage <-> compute conversion; float and double compute in themselves.
template <class T>
struct Num {
  using acc = T;
  static MPISGD_INLINE acc load(T v) { return v; }
  static MPISGD_INLINE T store(acc v) { return v; }
};

// e = alpha (x - c); x -= e; out = e (Accumulate: out += e).
template <class T, bool Accumulate>
struct Elastic {
  using N = Num<T>;
  using A = typename N::acc;
  T* x;
  const T* c;
  T* out;
  A alpha;

  MPISGD_INLINE void operator()(int64_t i) const {
    const A xi = N::load(x[i]);
    const A e = alpha * (xi - N::load(c[i]));
    const A o = Accumulate ? N::load(out[i]) + e : e;
    x[i] = N::store(xi - e);
    out[i] = N::store(o);
  }
};

// One EAMSGD iteration (Zhang et al. 2015, Algorithm 2) in lookahead storage
// y = x + delta v, g taken at y: with x = y - delta v (the iteration's copy),
// [(Centre) e = alpha (x - c); out = e;]  v' = delta v - lr g;
// y = x - e + v' + delta v';  v = v'   (the elastic and momentum steps both from x).
template <class T, bool Centre>
struct EamsgdStep {
  using N = Num<T>;
  using A = typename N::acc;
  T* y;
  T* v;
  const T* g;
  const T* c;
  T* out;
  A lr, delta, alpha;

  MPISGD_INLINE void operator()(int64_t i) const {
    const A vi = N::load(v[i]);
    const A vn = delta * vi - lr * N::load(g[i]);
    A x = N::load(y[i]) - delta * vi;
    if constexpr (Centre) {
      const A e = alpha * (x - N::load(c[i]));
      x -= e;
      out[i] = N::store(e);
    }
    y[i] = N::store(x + vn + delta * vn);
    v[i] = N::store(vn);
  }
};

// STREAM triad a = b + s c: the bandwidth reference of the benchmark.
template <class T>
struct Triad {
  using N = Num<T>;
  using A = typename N::acc;
  T* a;
  const T* b;
  const T* c;
  A s;

  MPISGD_INLINE void operator()(int64_t i) const { a[i] = N::store(N::load(b[i]) + s * N::load(c[i])); }
};

// Whether a backend whose 16-bit types are F16 and BF16 (void: none) has `dtype`.
template <class F16, class BF16>
bool supports(int dtype) {
  return dtype == kFloat32 || dtype == kFloat64 || (dtype == kFloat16 && !std::is_void_v<F16>) ||
         (dtype == kBFloat16 && !std::is_void_v<BF16>);
}

// Calls f(T{}) with the storage type T of `dtype` on a backend whose 16-bit
// types are F16 and BF16 (void: none); throws when the backend has no such type.
template <class F16, class BF16, class F>
void dispatch(const char* backend, int dtype, F f) {
  switch (dtype) {
    case kFloat32: return f(float{});
    case kFloat64: return f(double{});
    case kFloat16:
      if constexpr (!std::is_void_v<F16>) return f(F16{});
      break;
    case kBFloat16:
      if constexpr (!std::is_void_v<BF16>) return f(BF16{});
      break;
  }
  throw std::invalid_argument(std::string("mpisgd._ops: no ") + backend + " kernel for dtype code " +
                              std::to_string(dtype));
}

// The three operations on raw pointers, for a backend's executor.
template <class T, class Run>
void elastic(const Run& run, void* x, const void* c, void* out, double alpha, bool accumulate) {
  using A = typename Num<T>::acc;
  auto* px = static_cast<T*>(x);
  auto* pc = static_cast<const T*>(c);
  auto* po = static_cast<T*>(out);
  if (accumulate)
    run(Elastic<T, true>{px, pc, po, A(alpha)});
  else
    run(Elastic<T, false>{px, pc, po, A(alpha)});
}

template <class T, class Run>
void eamsgd_step(const Run& run, void* y, void* v, const void* g, const void* c, void* out,
                 double lr, double delta, double alpha) {
  using A = typename Num<T>::acc;
  auto* py = static_cast<T*>(y);
  auto* pv = static_cast<T*>(v);
  auto* pg = static_cast<const T*>(g);
  if (c)
    run(EamsgdStep<T, true>{py, pv, pg, static_cast<const T*>(c), static_cast<T*>(out),
                            A(lr), A(delta), A(alpha)});
  else
    run(EamsgdStep<T, false>{py, pv, pg, nullptr, nullptr, A(lr), A(delta), A(0)});
}

template <class T, class Run>
void triad(const Run& run, void* a, const void* b, const void* c, double s) {
  using A = typename Num<T>::acc;
  run(Triad<T>{static_cast<T*>(a), static_cast<const T*>(b), static_cast<const T*>(c), A(s)});
}

}  // namespace mpisgd
