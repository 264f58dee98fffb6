"""The checkpoint layout and its checks, on real files (one process, COMM_SELF)."""
import json
import os

import pytest
import torch
from mpi4py import MPI

from mpisgd import checkpoint, streams
from mpisgd.app.config import TrainConfig
from mpisgd.losses import LossWindow
from mpisgd.comm import Comm
from mpisgd.errors import ConfigError
from mpisgd.schedule import AdaComm, TimeVarying
from mpisgd.stragglers import Stragglers


def _config(**changes):
    cfg = TrainConfig(**{"algo": "local", "options": {"tau": 4}, "steps": 100, **changes})
    cfg.validate()
    return cfg.resolved()


def _save(tmp_path, step, keep=2):
    comm = Comm(MPI.COMM_SELF)
    state = {"x": torch.arange(3.0), "n": step, "nested": {"a": [1, 2.5, None, "s"]}}
    return checkpoint.save(comm, str(tmp_path), step, state, {"config": _config(), "rows": []},
                           keep=keep)


def test_save_is_atomic_keeps_the_newest_and_find_takes_the_newest(tmp_path):
    for step in (10, 20, 30):
        path = _save(tmp_path, step)
    assert sorted(os.listdir(tmp_path)) == ["step-00000020", "step-00000030"]
    assert checkpoint.find(str(tmp_path)) == path
    assert checkpoint.find(path) == path
    os.makedirs(tmp_path / ".step-00000040.tmp")                 # a job killed while writing
    os.makedirs(tmp_path / "step-00000050")                      # no meta.json: incomplete
    assert checkpoint.find(str(tmp_path)) == path
    state = checkpoint.load(path, 0)
    assert state["n"] == 30 and torch.equal(state["x"], torch.arange(3.0))
    assert state["nested"] == {"a": [1, 2.5, None, "s"]}
    meta = checkpoint.read_meta(path)
    assert meta["step"] == 30 and meta["world_size"] == 1


def test_find_names_what_is_missing(tmp_path):
    with pytest.raises(ConfigError, match="--resume .*: no such directory"):
        checkpoint.find(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="no complete checkpoint in it"):
        checkpoint.find(str(tmp_path))


def test_a_checkpoint_never_runs_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    path = tmp_path / "step-00000001"
    os.makedirs(path)
    torch.save({"x": Evil()}, path / "rank-00000.pt")
    with pytest.raises(ConfigError, match="it holds objects other than tensors, numbers and strings"):
        checkpoint.load(str(path), 0)


def test_meta_format_and_corruption_are_named(tmp_path):
    path = _save(tmp_path, 5)
    with open(os.path.join(path, "meta.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ConfigError, match="cannot read its meta.json"):
        checkpoint.read_meta(path)
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump({"format": 99}, f)
    with pytest.raises(ConfigError, match="checkpoint format 99"):
        checkpoint.read_meta(path)


def test_check_names_the_rank_count_and_the_first_option_that_changes_the_math():
    meta = {"world_size": 4, "config": json.loads(json.dumps(_config(), default=str)),
            "streams": streams.VERSION}
    checkpoint.check(meta, _config(), 4, "D")
    checkpoint.check(meta, _config(steps=500, log_every=7, out="other.h5", threads=3), 4, "D")
    with pytest.raises(ConfigError, match="checkpoint is of 4 ranks, this job has 8"):
        checkpoint.check(meta, _config(), 8, "D")
    with pytest.raises(ConfigError, match="--lr was 0.05 in the checkpointed run, now 0.1"):
        checkpoint.check(meta, _config(lr=0.1), 4, "D")
    changed = TrainConfig(algo="local", options={"tau": 8}, steps=100)
    changed.validate()
    with pytest.raises(ConfigError, match="--tau was 4 .* now 8"):
        checkpoint.check(meta, changed.resolved(), 4, "D")
    other = TrainConfig(algo="gossip", options={"tau": 4}, steps=100)
    other.validate()                 # --algo first, not the first option in the alphabet
    with pytest.raises(ConfigError, match="^--resume D: --algo was 'local' in the checkpointed run, "
                                          "now 'gossip'"):
        checkpoint.check(meta, other.resolved(), 4, "D")
    with pytest.raises(ConfigError, match=r"^--resume D: the checkpointed run drew its random "
                                          r"streams as version 1 \(mpisgd < 0.2\)"):
        checkpoint.check({k: v for k, v in meta.items() if k != "streams"}, _config(), 4, "D")


def test_an_option_newer_than_the_checkpoint_passes_at_its_default_only():
    """A checkpoint taken before --precision and --local-after existed: fp32 and no switch
    are what it ran, so they resume; bf16 would change the math."""
    old = json.loads(json.dumps(_config(), default=str))
    del old["precision"]
    del old["options"]["local_after"]
    meta = {"world_size": 4, "config": old, "streams": streams.VERSION}
    checkpoint.check(meta, _config(), 4, "D")
    with pytest.raises(ConfigError, match="--precision was 'fp32' .its default: the checkpoint predates it. in the "
                                          "checkpointed run, now 'bf16'"):
        checkpoint.check(meta, _config(precision="bf16"), 4, "D")


def test_default_dir_sits_beside_the_record():
    assert checkpoint.default_dir("runs/a.h5") == "runs/a.ckpt"
    assert checkpoint.default_dir("runs/a") == "runs/a.ckpt"


def test_schedules_and_delays_continue_from_their_state():
    a, b = AdaComm(8, 2.0), AdaComm(8, 2.0)
    a.tau, a._last, a._next, a.loss0, a.lr0 = 4, 40, 6.0, 2.3, 0.1
    a.history.append((0.0, 8, 2.3))
    b.load_state_dict(a.state_dict())
    assert vars(b) == vars(a)
    t = TimeVarying(3)
    t.epoch(50)
    u = TimeVarying(3)
    u.load_state_dict(t.state_dict())
    assert u._ends == t._ends
    s1 = Stragglers("exp:0.01", "exp:0.02", 7, 1)
    for _ in range(5):
        s1.compute(0.0), s1.comm()
    s2 = Stragglers("exp:0.01", "exp:0.02", 7, 1)
    s2.load_state_dict(s1.state_dict())
    assert [s2.compute(0.0) for _ in range(3)] == [s1.compute(0.0) for _ in range(3)]
    assert s2.comm() == s1.comm() and s2.summary() == s1.summary()


def test_loss_window_finds_the_first_non_finite_step_and_survives_a_checkpoint():
    w = LossWindow()
    for v in (1.0, 2.0, 3.0):
        w.add(torch.tensor(v))
    assert w.take(3) == (6.0, 3, 0, 1.0)
    for v in (4.0, float("nan"), float("inf")):
        w.add(torch.tensor(v))
    total, n, bad, first = w.take(6)
    assert n == 3 and bad == 5 and total != total and first == 4.0   # the window's first
    w.add(torch.tensor(0.5))
    w.add(2.5)                                   # a number, as Algorithm.step(loss) takes
    w2 = LossWindow()
    w2.load_state_dict(w.state_dict())
    w2.add(torch.tensor(float("nan")))
    assert w2.take(9)[1:] == (3, 9, 0.5)


def _prepare(tmp_path, **flags):
    from mpisgd.app import train
    from mpisgd.app.config import from_sources
    cfg = from_sources(None, {"steps": 8, "threads": 1, "out": str(tmp_path / "run.h5"),
                              "overwrite": True, **flags})
    return train.prepare(cfg, MPI.COMM_SELF), cfg


def test_a_checkpoint_dir_that_cannot_be_made_is_refused_before_training(tmp_path):
    (tmp_path / "f").write_text("a file")
    for where, why in ((tmp_path / "f", "is a file, not a directory"),
                       (tmp_path / "f" / "ck", f"{tmp_path / 'f'} is a file, so the directory "
                                               "cannot be created below it")):
        with pytest.raises(ConfigError, match=f"^--checkpoint-dir {where}:? {why}"):
            _prepare(tmp_path, checkpoint_dir=str(where))
    _prepare(tmp_path, checkpoint_dir=str(tmp_path / "new" / "deeper"))
    assert not (tmp_path / "new").exists()          # checked, not created


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_a_corrupt_rank_file_is_named_with_the_checkpoint_to_use(tmp_path, damage):
    from mpisgd.app import train
    from mpisgd.app.config import from_sources
    cfg = from_sources(None, dict(steps=8, log_every=4, checkpoint_every=4, threads=1,
                                  out=str(tmp_path / "run.h5")))
    train.run(cfg, MPI.COMM_SELF, quiet=True)       # checkpoints at 4 and 8 (the last step)
    ckpt = tmp_path / "run.ckpt"
    bad = ckpt / f"step-{8:08d}" / "rank-00000.pt"
    whole = bad.read_bytes()
    bad.write_bytes({"empty": b"", "truncated": whole[:len(whole) // 2],
                     "garbage": b"not a checkpoint at all" * 10}[damage])
    with pytest.raises(ConfigError, match=rf"^--resume {ckpt / f'step-{8:08d}'}: {bad} cannot "
                                          rf"be read \(.+\); resume from another checkpoint "
                                          rf"\(--resume {ckpt / f'step-{4:08d}'}\)$"):
        _prepare(tmp_path, resume=str(ckpt), steps=12, log_every=4)
