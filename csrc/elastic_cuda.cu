// CUDA backend: the functors of elastic.h in a grid-stride kernel on the caller's stream.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <stdexcept>
#include <string>

#include "elastic.h"
#include "ops.h"

namespace mpisgd {

template <>
struct Num<__half> {
  using acc = float;
  static MPISGD_INLINE float load(__half v) { return __half2float(v); }
  static MPISGD_INLINE __half store(float f) { return __float2half_rn(f); }
};

template <>
struct Num<__nv_bfloat16> {
  using acc = float;
  static MPISGD_INLINE float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  static MPISGD_INLINE __nv_bfloat16 store(float f) { return __float2bfloat16_rn(f); }
};

namespace {

constexpr int kBlock = 256;
constexpr int kBlocksPerSm = 8;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("mpisgd._ops: ") + what + ": " + cudaGetErrorString(err));
}

template <class F>
__global__ void grid_stride(int64_t n, F f) {
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) f(i);
}

// Multiprocessors of a device, queried once per device (the first launch there).
int multiprocessors(int device) {
  static std::array<std::atomic<int>, 256> cache{};
  if (device < 0 || device >= int(cache.size())) throw std::runtime_error("mpisgd._ops: bad device index");
  int sms = cache[device].load(std::memory_order_relaxed);
  if (sms == 0) {
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
    cache[device].store(sms, std::memory_order_relaxed);
  }
  return sms;
}

// Launches f over [0, n) on `stream` of `device`, then checks the launch. The module links
// its own static CUDA runtime: the launch makes `device` current for itself and restores the
// thread's previous device afterwards, so torch's notion of the current device is left alone.
struct Launch {
  int64_t n;
  int device;
  void* stream;
  const char* what;

  template <class F>
  void operator()(F f) const {
    if (n == 0) return;
    int previous = device;
    check(cudaGetDevice(&previous), "cudaGetDevice");
    if (previous != device) check(cudaSetDevice(device), "cudaSetDevice");
    const int64_t blocks = std::min<int64_t>((n + kBlock - 1) / kBlock, int64_t(multiprocessors(device)) * kBlocksPerSm);
    grid_stride<<<unsigned(blocks), kBlock, 0, cudaStream_t(stream)>>>(n, f);
    const cudaError_t launched = cudaGetLastError();
    if (previous != device) cudaSetDevice(previous);
    check(launched, what);
  }
};

}  // namespace

bool cuda_supports(int dtype) { return supports<__half, __nv_bfloat16>(dtype); }

void elastic_cuda(void* x, const void* c, void* out, int64_t n, double alpha, bool accumulate,
                  int dtype, int device, void* stream) {
  dispatch<__half, __nv_bfloat16>("CUDA", dtype, [&](auto t) {
    elastic<decltype(t)>(Launch{n, device, stream, "elastic kernel"}, x, c, out, alpha, accumulate);
  });
}

void eamsgd_step_cuda(void* y, void* v, const void* g, const void* c, void* out, int64_t n,
                      double lr, double delta, double alpha, int dtype, int device, void* stream) {
  dispatch<__half, __nv_bfloat16>("CUDA", dtype, [&](auto t) {
    eamsgd_step<decltype(t)>(Launch{n, device, stream, "eamsgd_step kernel"}, y, v, g, c, out, lr, delta, alpha);
  });
}

void triad_cuda(void* a, const void* b, const void* c, int64_t n, double s, int dtype, int device,
                void* stream) {
  dispatch<__half, __nv_bfloat16>("CUDA", dtype, [&](auto t) {
    triad<decltype(t)>(Launch{n, device, stream, "triad kernel"}, a, b, c, s);
  });
}

}  // namespace mpisgd
