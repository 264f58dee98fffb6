// Pointer-level entry points of mpisgd._ops: the backends (elastic_cpu.cpp,
// elastic_cuda.cu) implement them, bindings.cpp exposes them to Python.
// Every array is contiguous, of length n and of the storage type named by
// `dtype`; mpisgd/ops.py validates the tensors and holds the math. The CUDA
// entry points take the device of the arrays and the caller's stream (on
// which the kernel is queued: ordered with torch's kernels, no sync); each
// launch makes that device current and restores the previous one.
#pragma once

#include <cstdint>

namespace mpisgd {

enum Dtype : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

bool openmp();                      // built with OpenMP
bool cpu_supports(int dtype);
void elastic_cpu(void* x, const void* c, void* out, int64_t n, double alpha, bool accumulate,
                 int dtype, int threads);
void eamsgd_step_cpu(void* y, void* v, const void* g, const void* c, void* out, int64_t n,
                     double lr, double delta, double alpha, int dtype, int threads);
void triad_cpu(void* a, const void* b, const void* c, int64_t n, double s, int dtype, int threads);

#ifdef MPISGD_WITH_CUDA
bool cuda_supports(int dtype);
void elastic_cuda(void* x, const void* c, void* out, int64_t n, double alpha, bool accumulate,
                  int dtype, int device, void* stream);
void eamsgd_step_cuda(void* y, void* v, const void* g, const void* c, void* out, int64_t n,
                      double lr, double delta, double alpha, int dtype, int device, void* stream);
void triad_cuda(void* a, const void* b, const void* c, int64_t n, double s, int dtype, int device,
                void* stream);
#endif

}  // namespace mpisgd
