"""Packaging as a user meets it: install routes that ship the kernels, a pure-Python
fallback that says so, one version, and login-node commands that never load MPI.

Each check runs a real interpreter in a subprocess from outside the source tree
(``cwd`` a temporary folder), so it sees what an installed package gives.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAVE_BUILD = shutil.which("cmake") is not None and shutil.which("c++") is not None
needs_build = pytest.mark.skipif(not HAVE_BUILD, reason="no cmake or C++ compiler here")


def python(code: str, cwd, env=None, timeout=120) -> str:
    """Run ``code`` in this interpreter from ``cwd``; its stdout (fails on a non-zero exit)."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def load_setup():
    """setup.py's helpers, imported without running setup()."""
    spec = importlib.util.spec_from_file_location("mpisgd_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- login-node commands stay off MPI --------------------------------------------------

NO_MPI = "\nimport sys\nassert 'mpi4py.MPI' not in sys.modules, 'mpi4py.MPI was imported'\nprint('ok')"


def cli(*args: str) -> str:
    return ("import contextlib, io\nfrom mpisgd.app.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n"
            f"        code = main({list(args)!r})\n"
            "    except SystemExit as stop:\n"
            "        code = stop.code\n"
            "assert code == 0, code")


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    """A small completed run record (written here, no MPI)."""
    from mpisgd.app.record import RANK_FIELDS, RunRecord
    path = str(tmp_path_factory.mktemp("rec") / "run.h5")
    rec = RunRecord(path, {"algo": "sync"}, 2, 2, "none", "0")
    rec.log(step=1, wall_time=0.1, train_loss=1.0, test_loss=1.0, test_error=0.5, rounds=1,
            bytes_sent=8, consensus_distance=0.0, lr=0.05)
    rec.complete({k: [0, 0] for k in RANK_FIELDS}, [0.0])
    return path


@pytest.mark.parametrize("what", ["import mpisgd", "import mpisgd.topology", "--help",
                                  "train --help", "topology", "report"])
def test_login_node_commands_leave_mpi_unloaded(what, record, tmp_path):
    code = {"import mpisgd": "import mpisgd; mpisgd.__version__",
            "import mpisgd.topology": "import mpisgd.topology",
            "--help": cli("--help"),
            "train --help": cli("train", "--help"),
            "topology": cli("topology", "ring", "-n", "8"),
            "report": cli("report", record, "--out", str(tmp_path / "fig.png"))}[what]
    assert python(code + NO_MPI, tmp_path).strip().endswith("ok")


def test_the_mpi_check_sees_mpi_when_it_loads(tmp_path):
    """The assertion above can fail: the first use of MPI in the library imports it."""
    out = python("import sys, mpisgd\nmpisgd.build\nprint('mpi4py.MPI' in sys.modules)\n"
                 "from mpisgd.mpienv import mpi_library\nmpi_library()\n"
                 "print('mpi4py.MPI' in sys.modules)", tmp_path)
    assert out.split() == ["False", "True"]


# ---- metadata --------------------------------------------------------------------------

def test_one_version_and_a_true_python_floor():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert "version" in project["dynamic"] and "version" not in project
    assert project["requires-python"] == ">=3.10"        # the code uses 3.10 syntax
    extras = project["optional-dependencies"]
    assert extras["report"] == ["matplotlib"] and extras["digits"] == ["scikit-learn"]
    assert not {"matplotlib", "scikit-learn"} & set(project["dependencies"])
    assert not any(dep.startswith("torch") and "==" in dep for dep in project["dependencies"])


def test_cuda_detection_reads_the_target_torch_without_importing_it(tmp_path, monkeypatch):
    setup = load_setup()
    (tmp_path / "torch").mkdir()
    version = tmp_path / "torch" / "version.py"
    version.write_text("from typing import Optional\ncuda: Optional[str] = '12.8'\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    monkeypatch.setattr(setup.sysconfig, "get_paths", lambda: {"purelib": "", "platlib": ""})
    assert setup.torch_cuda_version() == "12.8"
    version.write_text("cuda: Optional[str] = None\n")
    assert setup.torch_cuda_version() is None
    monkeypatch.setenv("MPISGD_CUDA", "1")
    assert setup.want_cuda()
    monkeypatch.setenv("MPISGD_CUDA", "0")
    assert not setup.want_cuda()
    monkeypatch.setenv("MPISGD_CUDA", "auto")
    monkeypatch.setattr(setup.shutil, "which", lambda name: "/usr/bin/nvcc")
    assert not setup.want_cuda()          # nvcc, but a CPU torch: no CUDA build


# ---- install routes ---------------------------------------------------------------------

@needs_build
def test_the_installed_package_loads_its_kernels_from_outside_the_tree(tmp_path):
    """The development install (make install: pip install -e .) ships compiled kernels."""
    out = python("import mpisgd, mpisgd.ops as o; print(o.backend()); print(mpisgd.__file__)",
                 tmp_path, env={"MPISGD_OPS": "auto"})
    backend, where = out.splitlines()
    assert backend.startswith("cpu: C++"), backend


@needs_build
def test_a_wheel_ships_working_kernels(tmp_path):
    """``pip wheel .`` (an isolated PEP 517 build), installed apart, runs the compiled path."""
    dist = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist),
                           ROOT], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    wheel, = dist.glob("mpisgd-*.whl")
    import mpisgd
    assert wheel.name.startswith(f"mpisgd-{mpisgd.__version__}-")
    with zipfile.ZipFile(wheel) as z:
        assert any(n.startswith("mpisgd/_ops") and n.endswith(".so") for n in z.namelist())
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    out = python("import mpisgd, mpisgd.ops as o; print(o.backend()); print(mpisgd.__file__)",
                 tmp_path, env={"PYTHONPATH": str(site), "MPISGD_OPS": "auto"})
    backend, where = out.splitlines()
    assert where.startswith(str(site)), where
    assert backend.startswith("cpu: C++"), backend


def test_a_failed_build_says_so_in_one_line_and_leaves_the_pure_package(tmp_path):
    """No working compiler: the build succeeds without the module, and says why once."""
    pytest.importorskip("setuptools")
    lib = tmp_path / "lib"
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", str(lib),
                           "--build-temp", str(tmp_path / "tmp")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "CXX": "/bin/false",
                                                       "MPISGD_CUDA": "0"})
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stderr.splitlines() if line.startswith("mpisgd:")]
    assert len(said) == 1 and "compiled kernels not built" in said[0], proc.stderr
    assert not list(lib.rglob("_ops*.so"))
