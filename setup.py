"""Packaging for mpisgd.

Install torch first (``pip install torch==2.13.0`` for the CPU build, or
your cluster's CUDA build), then ``pip install --no-build-isolation -e .``:
an isolated build would pull an unpinned torch with gigabytes of CUDA
packages. The MPI comes from the system when mpi4py finds one, else from
the ``mpich`` wheel (``pip install -e .[mpich]``; the Makefile decides).

The compiled kernels (``csrc/``: the fused elastic-averaging updates, the
module ``mpisgd._ops``, see docs/kernels.md) are built through CMake by
:class:`CMakeBuild` when ``cmake`` is on PATH; they need a C++17 compiler
and ``pybind11`` (``pip install pybind11`` first: the build is not
isolated). CUDA kernels too when ``MPISGD_CUDA=1``, not when ``0``; unset
or ``auto``: when ``nvcc`` is on PATH and torch is a CUDA build. A failed
build prints one line and installs the package without the module; the
torch reference path of the same signature stands in.
"""
import os
import shutil
import subprocess
import sys

from setuptools import Extension, find_packages, setup
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
                print(f"mpisgd: compiled kernels{' with CUDA' if cuda else ''} not built ({why}); "
                      + ("trying without CUDA" if cuda else "using the torch reference path"))
        if os.path.exists(target):          # a stale module from an earlier build
            os.remove(target)


def want_cuda() -> bool:
    """MPISGD_CUDA=1: yes, 0: no, unset or auto: nvcc on PATH and a CUDA build of torch."""
    flag = os.environ.get("MPISGD_CUDA", "auto")
    if flag not in ("0", "1", "auto"):
        sys.exit(f"mpisgd: MPISGD_CUDA must be 0, 1 or auto, got {flag!r}")
    if flag != "auto":
        return flag == "1"
    try:
        import torch
        return torch.version.cuda is not None and shutil.which("nvcc") is not None
    except ImportError:
        return False


def extensions():
    if os.path.exists(os.path.join(HERE, "CMakeLists.txt")) and shutil.which("cmake"):
        return [CMakeExtension("mpisgd._ops")]
    return []


setup(
    name="mpisgd",
    version="0.1.0",
    description="Communication-efficient distributed SGD on MPI (Cooperative SGD, local SGD, "
                "EASGD, parameter servers, gossip)",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["mpisgd", "mpisgd.*"]),
    install_requires=[
        "torch>=2.1,<3",        # register_post_accumulate_grad_hook; 2.13 meets it
        "mpi4py>=4",
        "numpy",
        "h5py",
        "tqdm",
        "pyyaml",
        "matplotlib",
        "scikit-learn",
    ],
    extras_require={
        "mpich": ["mpich"],
        "test": ["pytest", "pytest-mpi"],
    },
    entry_points={"console_scripts": ["mpisgd=mpisgd.cli:main"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": CMakeBuild},
)
