"""The build step of mpisgd that is not declarative: the compiled kernels.

Metadata and dependencies live in ``pyproject.toml`` (PEP 621); this file
holds the CMake build of ``csrc/`` (the fused elastic-averaging updates, the
module ``mpisgd._ops``, see docs/kernels.md) as a setuptools ``build_ext``,
so that every install route builds it the same way::

    pip install .                      # a wheel built in an isolated environment
    pip install -e .                   # editable: the module lands beside the sources
    python -m build --wheel            # a wheel in dist/
    python setup.py build_ext --inplace    # the kernels only, in the source tree

The build needs a C++17 compiler and CMake (>= 3.18) on ``PATH``; pybind11
comes from the build requirements. CUDA kernels are built too when
``MPISGD_CUDA=1``, never when ``0``; unset or ``auto``: when ``nvcc`` is on
``PATH`` and the environment being installed into holds a CUDA build of
torch (read from its files, without importing it: an isolated build cannot
import the target's torch). A failed build prints one line, ``mpisgd:
compiled kernels not built (...)``, and installs the pure-Python package;
the torch twins of the same signatures stand in, and ``mpisgd.ops.backend()``
and every run's summary line say so.
"""
import os
import re
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[], optional=True)   # missing after a failed build: fine


class CMakeBuild(build_ext):
    """Configure and build ``CMakeLists.txt``; a failure leaves the torch fallback.

    A failed CUDA build is retried without CUDA.
    """

    def build_extension(self, ext):
        target = os.path.abspath(self.get_ext_fullpath(ext.name))
        if not shutil.which("cmake"):
            self._skip(target, "no cmake on PATH; `pip install cmake` or your system's package")
            return
        for cuda in (True, False) if want_cuda() else (False,):
            tmp = os.path.join(os.path.abspath(self.build_temp), ext.name, "cuda" if cuda else "cpu")
            os.makedirs(tmp, exist_ok=True)
            try:
                subprocess.check_call(["cmake", HERE, f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={os.path.dirname(target)}",
                                       f"-DPython_EXECUTABLE={sys.executable}",
                                       "-DCMAKE_BUILD_TYPE=Release", f"-DMPISGD_CUDA={'ON' if cuda else 'OFF'}"],
                                      cwd=tmp)
                subprocess.check_call(["cmake", "--build", ".", "-j", str(os.cpu_count() or 1)], cwd=tmp)
                return
            except (OSError, subprocess.CalledProcessError) as err:
                why = (f"`{' '.join(err.cmd[:2])}` exited with {err.returncode}, see above"
                       if isinstance(err, subprocess.CalledProcessError) else err)
                if cuda:
                    print(f"mpisgd: CUDA kernels not built ({why}); trying without CUDA", file=sys.stderr)
                else:
                    self._skip(target, why)

    @staticmethod
    def _skip(target: str, why) -> None:
        print(f"mpisgd: compiled kernels not built ({why}); the package runs on the torch "
              "reference path (mpisgd.ops.backend() says which runs)", file=sys.stderr)
        if os.path.exists(target):          # a stale module from an earlier build
            os.remove(target)


def torch_cuda_version() -> str | None:
    """``torch.version.cuda`` of the torch in the environment being installed into, or ``None``.

    Read from ``torch/version.py`` on ``sys.path`` or in the interpreter's
    site-packages (where an isolated build's ``sys.path`` no longer looks).
    """
    paths = sys.path + [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    for path in dict.fromkeys(p for p in paths if p):
        try:
            with open(os.path.join(path, "torch", "version.py"), encoding="utf-8") as f:
                text = f.read()
        except OSError:
            continue
        found = re.search(r"^cuda\s*(?::\s*[^=]+)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
        return found.group(1) if found else None
    return None


def want_cuda() -> bool:
    """MPISGD_CUDA=1: yes, 0: no, unset or auto: nvcc on PATH and a CUDA build of torch."""
    flag = os.environ.get("MPISGD_CUDA", "auto")
    if flag not in ("0", "1", "auto"):
        sys.exit(f"mpisgd: MPISGD_CUDA must be 0, 1 or auto, got {flag!r}")
    if flag != "auto":
        return flag == "1"
    return shutil.which("nvcc") is not None and torch_cuda_version() is not None


if __name__ == "__main__":       # as pip, build and setuptools run it (tests import the helpers)
    setup(
        ext_modules=[CMakeExtension("mpisgd._ops")],
        cmdclass={"build_ext": CMakeBuild},
    )
