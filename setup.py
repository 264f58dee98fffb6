"""Packaging for mpisgd.

Install torch first (``pip install torch==2.13.0`` for the CPU build, or
your cluster's CUDA build), then ``pip install --no-build-isolation -e .``:
an isolated build would pull an unpinned torch with gigabytes of CUDA
packages. The MPI comes from the system when mpi4py finds one, else from
the ``mpich`` wheel (``pip install -e .[mpich]``; the Makefile decides).

The compiled kernels (``csrc/``, a later issue) are built through CMake by
:class:`CMakeBuild` when a top-level ``CMakeLists.txt`` exists and a compiler
is present; the package works without them (a torch reference path of the
same signature stands in).
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
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Configure and build ``CMakeLists.txt``; a failure leaves the torch fallback."""

    def build_extension(self, ext):
        out = os.path.dirname(os.path.abspath(self.get_ext_fullpath(ext.name)))
        tmp = os.path.join(self.build_temp, ext.name)
        os.makedirs(tmp, exist_ok=True)
        try:
            subprocess.check_call(["cmake", HERE, f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out}",
                                   f"-DPython_EXECUTABLE={sys.executable}",
                                   "-DCMAKE_BUILD_TYPE=Release"], cwd=tmp)
            subprocess.check_call(["cmake", "--build", ".", "-j"], cwd=tmp)
        except (OSError, subprocess.CalledProcessError) as err:
            print(f"mpisgd: compiled kernels not built ({err}); using the torch reference path")


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
