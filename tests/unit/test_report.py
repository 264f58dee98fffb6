"""``mpisgd report`` on real single-process runs: groups over seeds, labels, the table, axes."""
import numpy as np
import pytest
from mpi4py import MPI

from mpisgd.app import cli, record, report, train
from mpisgd.app.config import from_sources


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """sync with seeds 0 and 1, local tau 4 with seed 0: three records in one folder."""
    d = tmp_path_factory.mktemp("runs")
    paths = []
    for name, flags in (("sync-0", dict(seed=0)), ("sync-1", dict(seed=1)),
                        ("local-0", dict(seed=0, algo="local", tau=4))):
        out = str(d / "sub" / f"{name}.h5")
        cfg = from_sources(None, dict(steps=40, log_every=10, out=out, threads=1, **flags))
        train.run(cfg, MPI.COMM_SELF, quiet=True)
        paths.append(out)
    return d, paths


def test_runs_that_differ_only_in_the_seed_are_one_group(runs):
    d, paths = runs
    recs = [record.read(p) for p in report.records_in([str(d)])]
    assert len(recs) == 3
    groups = report.group(recs)
    assert [len(g) for g in groups] == [1, 2]            # in the order of the files found
    assert report.labels(groups) == ["local tau=4, 1 workers", "sync, 1 workers (2 runs)"]


def test_an_option_of_some_groups_only_is_labelled_where_it_is_not_its_default(runs):
    """DiLoCo beside sync: ``outer`` applies to local only, so it is shown there (nesterov,
    not its default none); its lr and momentum at their defaults are not."""
    import copy
    d, paths = runs
    sync, local = record.read(paths[1]), record.read(paths[2])
    diloco = copy.deepcopy(local)
    diloco["config"]["options"].update(outer="nesterov", outer_lr=0.7, outer_momentum=0.9)
    assert report.labels(report.group([sync, diloco])) == [
        "sync, 1 workers", "local outer=nesterov tau=4, 1 workers"]
    assert report.labels(report.group([sync, local])) == ["sync, 1 workers",
                                                          "local tau=4, 1 workers"]


def test_a_group_curve_is_the_mean_with_the_runs_extremes(runs):
    _, paths = runs
    a, b = record.read(paths[0]), record.read(paths[1])
    xs, mean, low, high = report.curve([a, b], "step", "test_error")
    assert list(xs) == [10, 20, 30, 40]
    both = np.stack([a["metrics"]["test_error"], b["metrics"]["test_error"]])
    np.testing.assert_allclose(mean, both.mean(0))
    np.testing.assert_allclose(low, both.min(0))
    np.testing.assert_allclose(high, both.max(0))
    xs, mean, low, high = report.curve([a, b], "wall_time", "train_loss", band="std")
    assert xs[-1] <= min(a["metrics"]["wall_time"][-1], b["metrics"]["wall_time"][-1])
    assert np.all(high >= mean) and np.all(low <= mean)


def test_the_table_has_means_over_runs_and_step_percentiles(runs):
    _, paths = runs
    recs = [record.read(p) for p in paths]
    text = report.table(recs, 0.99)
    row = next(line for line in text.splitlines() if line.startswith("sync, 1 workers (2 runs)"))
    errs = [r["metrics"]["test_error"][-1] for r in recs[:2]]
    assert f"{np.mean(errs):.4f}+-{np.std(errs, ddof=1):.4f}" in row
    assert " 2/2 " in row
    pct = report.step_percentiles(recs[:2])
    assert pct is not None and pct[0] <= pct[1] <= pct[2]
    assert "/".join(f"{1e3 * p:.2f}" for p in pct) in row
    assert recs[0]["steps"]["step_sample"].shape == (1, 512)
    assert np.isfinite(recs[0]["steps"]["step_sample"]).sum() == 39      # 40 steps, 39 intervals


def test_the_figure_has_log_axes_percent_errors_megabytes_and_the_target(runs, tmp_path):
    import matplotlib.pyplot as plt
    d, paths = runs
    recs = [record.read(p) for p in paths]
    fig = report.plot(recs, str(tmp_path / "f.png"), 0.5, ("train_loss", "test_error"),
                      ("time", "bytes"))
    try:
        axes = fig.axes
        assert len(axes) == 4 and all(ax.get_yscale() == "log" for ax in axes)
        assert axes[1].get_xlabel() == "bytes sent (MB, all ranks)"
        err_time = axes[2]
        assert [line.get_ydata()[0] for line in err_time.get_lines() if line.get_linestyle() == "--"] == [0.5]
        labels = err_time.get_legend_handles_labels()[1] if err_time.get_legend() is None else \
            [t.get_text() for t in err_time.get_legend().get_texts()]
        assert "sync, 1 workers (2 runs)" in labels and "target 50.0%" in labels
        assert err_time.yaxis.get_major_formatter()(0.05, 0) == "5%"
    finally:
        plt.close(fig)
    assert open(tmp_path / "f.png", "rb").read(4) == b"\x89PNG"


@pytest.mark.parametrize("band, filled", [("none", 0), ("minmax", 1)])
def test_panels_axes_and_band_from_the_command_line(runs, tmp_path, capsys, monkeypatch,
                                                    band, filled):
    """The flags shape the figure: one panel (test loss) against steps; the two-seed group's
    band drawn or not (the one-run group never has one)."""
    import matplotlib.pyplot as plt
    d, _ = runs
    made, draw, close = [], report.plot, plt.close
    monkeypatch.setattr(report, "plot", lambda *a, **k: made.append(draw(*a, **k)) or made[-1])
    monkeypatch.setattr(plt, "close", lambda fig=None: None)     # the test looks at it first
    png = str(tmp_path / "g.png")
    assert cli.main(["report", str(d), "--out", png, "--panels", "test_loss", "--x", "steps",
                     "--band", band]) == 0
    assert f"figure: {png}" in capsys.readouterr().out
    (fig,) = made
    (ax,) = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("steps", "test loss")
    assert [list(line.get_xdata()) for line in ax.get_lines()] == [[10, 20, 30, 40]] * 2
    assert len(ax.collections) == filled
    close(fig)



@pytest.mark.parametrize("args, needle", [
    (["--panels", "accuracy"], "--panels takes a comma-separated list of train_loss"),
    (["--x", "epochs"], "--x takes a comma-separated list of time, steps, bytes"),
])
def test_a_bad_panel_or_axis_is_named(runs, capfd, args, needle):
    d, _ = runs
    assert cli.main(["report", str(d), *args]) == 2
    assert needle in capfd.readouterr().err


def test_a_folder_without_records_is_named(tmp_path, capfd):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert f"no run records (*.h5) under {tmp_path}" in capfd.readouterr().err
