"""Configuration sources, the run record at size 1, and the report."""
import h5py
import numpy as np
import pytest
import torch
from mpi4py import MPI

from mpisgd.app import cli, record, report, train
from mpisgd.app.config import from_sources
from mpisgd.errors import ConfigError


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algo: local\ntau: 4\nbatch-size: 16\nlr: 0.2\n")
    cfg = from_sources(str(path), {"lr": 0.3, "steps": None})
    assert (cfg.algo, cfg.batch_size, cfg.lr, cfg.options) == ("local", 16, 0.3, {"tau": 4})
    cfg.validate()
    assert cfg.options["momentum_policy"] == "local"


@pytest.mark.parametrize("text, message", [
    ("tua: 4\n", "unknown key 'tua'"),
    ("- a\n- b\n", "expected a mapping"),
    ("steps: many\n", "--steps must be an integer, got .many."),
    ("steps: 2.7\n", "--steps must be an integer, got 2.7"),
    ("lr: true\n", "--lr must be a finite number, got True"),
    ("batch-size: null\n", "--batch-size needs a value"),
    ("data: 5\n", "--data must be a string, got 5"),
    ("1: 2\n", "keys must be option names"),
])
def test_bad_yaml(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        from_sources(str(path), {})


def test_missing_config_file():
    with pytest.raises(ConfigError, match="--config: no such file"):
        from_sources("/no/such.yaml", {})


@pytest.mark.parametrize("flags, message", [
    ({"momentum": 1.5}, "--momentum must be in"), ({"batch_size": 0}, "--batch-size must be"),
    ({"algo": "sync", "tau": 3}, "--tau does not apply to algorithm 'sync'"),
    ({"algo": "local", "tau": -1}, "--tau must be a positive integer, got -1"),
    ({"steps": 5, "epochs": 1.0}, "--epochs must be used without --steps"),
    ({"seed": -1}, "--seed must be a non-negative integer, got -1"),
    ({"eval_samples": 0}, "--eval-samples must be a positive integer, got 0"),
    ({"accumulate": 0}, "--accumulate must be a positive integer, got 0"),
    ({"optimizer": "lamb"}, "--optimizer must be one of sgd, adam, adamw, got 'lamb'"),
    ({"precision": "fp8"}, "--precision must be one of fp32, bf16, fp16, got 'fp8'"),
    ({"precision": "fp16", "device": "cpu"}, "--precision fp16 needs a CUDA device"),
    ({"precision": "fp16", "device": "cuda", "algo": "ps-sync"},
     "--precision fp16 does not combine with --algo ps-sync: the server steps the model"),
    ({"precision": "fp16", "device": "cuda", "algo": "sync", "compress": "int8"},
     "--precision fp16 does not combine with sync's --compress"),
    ({"precision": "fp16", "device": "cuda", "algo": "eamsgd"},
     "--precision fp16 does not combine with --algo eamsgd: its update reads the gradients"),
    ({"optimizer": "adamw", "betas": "0.9"}, r"--betas must be two numbers in \[0, 1\) as B1,B2"),
    ({"optimizer": "adam", "eps": 0.0}, "--eps must be positive, got 0.0"),
    ({"optimizer": "adam", "momentum": 0.9}, "--momentum applies to --optimizer sgd"),
    ({"optimizer": "adamw", "algo": "eamsgd"}, "--optimizer adamw does not combine with --algo eamsgd"),
    ({"lr": -0.1}, "--lr must be positive, got -0.1"),
    ({"bucket_mb": "inf"}, "--bucket-mb must be a finite number, got 'inf'"),
    ({"algo": "easgd", "center": "dedicated"}, "--center must be one of replicated, rank0"),
    ({"algo": "k-sync", "staleness_lr": "1,0.1"},
     "--staleness-lr does not apply to algorithm 'k-sync'"),
    ({"algo": "async", "staleness_lr": "1"}, "--staleness-lr must be C,ETA_MAX"),
    ({"straggler": "exp:-1"}, "--straggler exp:MEAN needs MEAN > 0"),
    ({"algo": "ps-sync", "comm_delay": "soon"}, "--comm-delay must be SECONDS >= 0"),
    ({"algo": "async-easgd", "center": "rank0", "servers": 2},
     "--servers 2 needs center dedicated"),
    ({"epochs": float("inf")}, "--epochs must be a finite number, got inf"),
    ({"algo": "local", "period_exp": "inf"}, "--period-exp must be a finite number, got 'inf'"),
])
def test_config_validation_names_the_flag(flags, message):
    with pytest.raises(ConfigError, match=message):
        from_sources(None, flags).validate()


def test_fp16_is_accepted_where_a_scaler_works():
    """sync with --compress none (the default, given), local, and --device auto (checked where
    a rank resolves it); validate twice, as a study's planning does."""
    for flags in ({"algo": "sync", "compress": "none", "device": "cuda"},
                  {"algo": "local", "tau": 4, "device": "cuda"}, {"device": "auto"}):
        cfg = from_sources(None, {"precision": "fp16", **flags})
        cfg.validate()
        cfg.validate()


def run_single(tmp_path, **flags):
    out = str(tmp_path / "run.h5")
    cfg = from_sources(None, dict(steps=30, log_every=10, out=out, threads=1, **flags))
    return train.run(cfg, MPI.COMM_SELF, quiet=True), out


def test_single_process_run_and_epochs(tmp_path):
    summary, out = run_single(tmp_path, algo="local", tau=5)
    rec = record.read(out)
    assert rec["attrs"]["status"] == "completed" and rec["attrs"]["workers"] == 1
    assert list(rec["metrics"]["rounds"]) == [2, 4, 6]
    assert summary["test_error"] < 0.5
    cfg = from_sources(None, dict(epochs=2.0, batch_size=64, out=out, threads=1, overwrite=True))
    assert train.run(cfg, MPI.COMM_SELF, quiet=True)["step"] == np.ceil(2 * 1438 / 64)


def _errors_on(params, x, y, model="mlp"):
    """The test error of ``params`` on (x, y), computed here (not by the driver)."""
    from mpisgd import models
    net = models.build(model, x.shape[1:], 10)
    torch.nn.utils.vector_to_parameters(torch.as_tensor(params), net.parameters())
    with torch.no_grad():
        return (net(x).argmax(1) != y).double().mean().item()


@pytest.mark.parametrize("flags, samples", [({}, 4), (dict(eval_samples=10), 10),
                                            (dict(eval_samples=10**6), 64)])
def test_a_log_point_evaluates_a_fixed_seeded_subset(tmp_path, flags, samples):
    """--eval-samples N: the first N of the stream EVAL_SUBSET's permutation of the test set
    (sorted), the same at every log point; by default a quarter of the samples trained
    between log points (1 worker x 2 steps x 8 / 4 = 4); at most the test set (64)."""
    from mpisgd import data, streams
    out = str(tmp_path / "e.h5")
    cfg = from_sources(None, dict(data="synthetic:256", steps=8, log_every=2, batch_size=8,
                                  seed=5, out=out, threads=1, **flags))
    summary = train.run(cfg, MPI.COMM_SELF, quiet=True)
    rec = record.read(out)
    assert rec["config"]["eval_samples"] == summary["eval_samples"] == samples
    assert rec["attrs"]["eval_time"] == summary["eval_time"] > 0
    assert f"evaluating {samples} test samples a log point" in train.summary_line(summary)
    d = data.load("synthetic:256")
    chosen = np.sort(streams.generator(streams.EVAL_SUBSET, 5).permutation(64)[:samples])
    expected = _errors_on(rec["final"]["params"], d.x_test[chosen], d.y_test[chosen])
    assert rec["metrics"]["test_error"][-1] == pytest.approx(expected, abs=1e-12)


def test_failed_run_leaves_a_record_saying_why(tmp_path, monkeypatch):
    from mpisgd.algorithms.sync import SyncSGD
    original = SyncSGD.step

    def failing(self, loss=None):
        if self.steps == 12:
            raise RuntimeError("injected failure")
        original(self)
    monkeypatch.setattr(SyncSGD, "step", failing)
    with pytest.raises(RuntimeError, match="injected"):
        run_single(tmp_path)
    rec = record.read(str(tmp_path / "run.h5"))
    assert rec["attrs"]["status"] == "failed: RuntimeError: injected failure"
    assert list(rec["metrics"]["step"]) == [10]


def test_interrupted_record_status(tmp_path):
    path = str(tmp_path / "r.h5")
    record.RunRecord(path, {"algo": "sync"}, 4, 4, "MPICH", "0")
    with h5py.File(path) as f:
        assert f.attrs["status"].startswith("failed: the job ended before")


def test_report_table_and_figure(tmp_path, capsys):
    _, out = run_single(tmp_path)
    png = str(tmp_path / "fig.png")
    assert cli.main(["report", out, out, "--out", png, "--target", "0.9"]) == 0
    text = capsys.readouterr().out
    assert "target test error: 0.9" in text and "sync, 1 workers (2 runs, 1 seeds)   2/2" in text
    assert open(png, "rb").read(4) == b"\x89PNG"
    reach = report.first_reach(record.read(out), 0.9)
    assert reach is not None and reach[1] == 10


def test_report_missing_file(capfd):
    assert cli.main(["report", "/no/run.h5"]) == 2
    assert "mpisgd: error: no such run record: /no/run.h5" in capfd.readouterr().err


def test_unknown_flag_is_one_line(capfd):
    assert cli.main(["train", "--tua", "3"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unrecognized arguments: --tua 3" in err[0]


@pytest.mark.parametrize("var", ["PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"])
def test_a_mistake_in_the_command_line_is_rank_0s_to_print(monkeypatch, capfd, var):
    monkeypatch.setenv(var, "3")
    assert cli.main(["train", "--tua", "3"]) == 2
    assert capfd.readouterr().err == ""
    monkeypatch.setenv(var, "0")
    assert cli.main(["train", "--tua", "3"]) == 2
    assert "unrecognized arguments: --tua 3" in capfd.readouterr().err


def test_config_that_is_a_directory(tmp_path):
    with pytest.raises(ConfigError, match="cannot read it"):
        from_sources(str(tmp_path), {})


@pytest.mark.parametrize("flags, env, message", [
    ({"out": "/proc/mpisgd-run.h5"}, {}, "--out /proc/mpisgd-run.h5: cannot write it"),
    ({"model": "cnn", "data": "synthetic:64"}, {}, "model cnn needs image inputs"),
    ({}, {"MPISGD_WAIT": "nap"}, "MPISGD_WAIT must be auto, spin or yield"),
    ({}, {"MPISGD_STAGING": "sometimes"}, "MPISGD_STAGING must be auto, always or never"),
])
def test_prepare_refuses_before_training(monkeypatch, flags, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = from_sources(None, dict(steps=5, threads=1, **flags))
    with pytest.raises(ConfigError, match=message):
        train.prepare(cfg, MPI.COMM_SELF)


def test_model_that_does_not_fit_the_data(tmp_path):
    import h5py
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((20, 2, 3, 3), np.float32)       # 2 channels: fine for cnn ...
        f["y"] = np.arange(20) % 2
    cfg = from_sources(None, dict(model="cnn", data=f"hdf5:{path}", steps=5, threads=1))
    train.prepare(cfg, MPI.COMM_SELF)
    with h5py.File(path, "a") as f:                           # ... 1-D rows are not
        del f["x"]
        f["x"] = np.zeros(20, np.float32)
    with pytest.raises(ConfigError, match="one row per sample"):
        train.prepare(from_sources(None, dict(data=f"hdf5:{path}", steps=5)), MPI.COMM_SELF)


def test_deterministic_holds_during_the_run_and_is_recorded(tmp_path, monkeypatch):
    seen, run = [], train._run
    monkeypatch.setattr(train, "_run", lambda *a: seen.append(
        (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)) or run(*a))
    out = str(tmp_path / "d.h5")
    cfg = from_sources(None, dict(steps=4, threads=1, out=out, deterministic=True))
    train.run(cfg, MPI.COMM_SELF, quiet=True)
    assert seen == [(True, False)]
    assert not torch.are_deterministic_algorithms_enabled()         # the caller's, back
    assert record.read(out)["config"]["deterministic"] is True


def test_a_missing_tensorboard_extra_is_one_line_naming_it(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^--tensorboard needs the tensorboard package: "
                                          r"pip install 'mpisgd\[tensorboard\]'"):
        from_sources(None, dict(tensorboard="tb")).validate()



def test_bf16_on_a_cpu_without_bf16_instructions_is_a_warning(tmp_path):
    """The flags line of /proc/cpuinfo says whether the CPU has bf16 (avx512_bf16, amx_bf16);
    without it --precision bf16 warns (emulated: 10-17 times slower), with it, and on a GPU,
    nothing is said."""
    import warnings
    from mpisgd import precision
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu avx2 avx512f\n")
    assert precision.cpu_bf16(str(info)) is False
    info.write_text("flags : fpu avx512f avx512_bf16\n")
    assert precision.cpu_bf16(str(info)) is True
    assert precision.cpu_bf16(str(tmp_path / "none")) is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        precision.check_device("bf16", torch.device("cuda"))
        precision.check_device("fp32", torch.device("cpu"))
        precision.check("bf16", "cpu")       # validate: the warning is the rank's, given once
    assert not caught
    if precision.cpu_bf16() is False:
        with pytest.warns(UserWarning, match="--precision bf16 on a CPU without bf16 instructions"):
            precision.check_device("bf16", torch.device("cpu"))
