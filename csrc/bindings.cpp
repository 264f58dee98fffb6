// mpisgd._ops: the pointer-level kernels for Python. Use mpisgd.ops, which
// validates the tensors, picks the backend and holds the math.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "ops.h"

namespace py = pybind11;
using std::uintptr_t;

namespace {

void* ptr(uintptr_t p) { return reinterpret_cast<void*>(p); }

// The dtypes with a kernel, by name, for a backend's `supports`.
py::tuple names(bool (*supports)(int)) {
  const std::pair<const char*, int> all[] = {{"float32", mpisgd::kFloat32}, {"float64", mpisgd::kFloat64},
                                             {"float16", mpisgd::kFloat16}, {"bfloat16", mpisgd::kBFloat16}};
  py::list out;
  for (const auto& [name, code] : all)
    if (supports(code)) out.append(name);
  return py::tuple(out);
}

}  // namespace

PYBIND11_MODULE(_ops, m) {
  m.doc() = "Fused elastic-averaging kernels on raw pointers (use mpisgd.ops).";
  m.attr("DTYPES") = py::dict(py::arg("float32") = int(mpisgd::kFloat32), py::arg("float64") = int(mpisgd::kFloat64),
                              py::arg("float16") = int(mpisgd::kFloat16), py::arg("bfloat16") = int(mpisgd::kBFloat16));
  m.attr("CPU_DTYPES") = names(mpisgd::cpu_supports);
  m.def("openmp", &mpisgd::openmp, "True when the CPU kernels were built with OpenMP.");

  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("elastic_cpu", [](uintptr_t x, uintptr_t c, uintptr_t out, int64_t n, double alpha, bool accumulate,
                          int dtype, int threads) {
          mpisgd::elastic_cpu(ptr(x), ptr(c), ptr(out), n, alpha, accumulate, dtype, threads);
        }, "e = alpha (x - c); x -= e; out = e (or out += e).", py::arg("x"), py::arg("c"), py::arg("out"),
        py::arg("n"), py::arg("alpha"), py::arg("accumulate"), py::arg("dtype"), py::arg("threads"), nogil);
  m.def("eamsgd_step_cpu", [](uintptr_t y, uintptr_t v, uintptr_t g, uintptr_t c, uintptr_t out, int64_t n,
                              double lr, double delta, double alpha, int dtype, int threads) {
          mpisgd::eamsgd_step_cpu(ptr(y), ptr(v), ptr(g), ptr(c), ptr(out), n, lr, delta, alpha, dtype, threads);
        }, "EAMSGD's Nesterov step in lookahead storage, then the elastic step when c != 0.", py::arg("y"),
        py::arg("v"), py::arg("g"), py::arg("c"), py::arg("out"), py::arg("n"), py::arg("lr"), py::arg("delta"),
        py::arg("alpha"), py::arg("dtype"), py::arg("threads"), nogil);
  m.def("triad_cpu", [](uintptr_t a, uintptr_t b, uintptr_t c, int64_t n, double s, int dtype, int threads) {
          mpisgd::triad_cpu(ptr(a), ptr(b), ptr(c), n, s, dtype, threads);
        }, "a = b + s c.", py::arg("a"), py::arg("b"), py::arg("c"), py::arg("n"), py::arg("s"), py::arg("dtype"),
        py::arg("threads"), nogil);

#ifdef MPISGD_WITH_CUDA
  m.attr("CUDA_DTYPES") = names(mpisgd::cuda_supports);
  m.def("elastic_cuda", [](uintptr_t x, uintptr_t c, uintptr_t out, int64_t n, double alpha, bool accumulate,
                           int dtype, int device, uintptr_t stream) {
          mpisgd::elastic_cuda(ptr(x), ptr(c), ptr(out), n, alpha, accumulate, dtype, device, ptr(stream));
        }, "elastic_cpu on a CUDA stream of a device.", py::arg("x"), py::arg("c"), py::arg("out"), py::arg("n"),
        py::arg("alpha"), py::arg("accumulate"), py::arg("dtype"), py::arg("device"), py::arg("stream"), nogil);
  m.def("eamsgd_step_cuda", [](uintptr_t y, uintptr_t v, uintptr_t g, uintptr_t c, uintptr_t out, int64_t n,
                               double lr, double delta, double alpha, int dtype, int device, uintptr_t stream) {
          mpisgd::eamsgd_step_cuda(ptr(y), ptr(v), ptr(g), ptr(c), ptr(out), n, lr, delta, alpha, dtype, device,
                                   ptr(stream));
        }, "eamsgd_step_cpu on a CUDA stream.", py::arg("y"), py::arg("v"), py::arg("g"), py::arg("c"),
        py::arg("out"), py::arg("n"), py::arg("lr"), py::arg("delta"), py::arg("alpha"), py::arg("dtype"),
        py::arg("device"), py::arg("stream"), nogil);
  m.def("triad_cuda", [](uintptr_t a, uintptr_t b, uintptr_t c, int64_t n, double s, int dtype, int device,
                         uintptr_t stream) {
          mpisgd::triad_cuda(ptr(a), ptr(b), ptr(c), n, s, dtype, device, ptr(stream));
        }, "triad_cpu on a CUDA stream of a device.", py::arg("a"), py::arg("b"), py::arg("c"), py::arg("n"),
        py::arg("s"), py::arg("dtype"), py::arg("device"), py::arg("stream"), nogil);
#else
  m.attr("CUDA_DTYPES") = py::tuple();
#endif
}
