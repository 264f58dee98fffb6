"""Datasets, sharding, worker streams and models, on real files made here."""
import os
import pickle

import h5py
import numpy as np
import pytest
import torch

from mpisgd import data, models
from mpisgd.errors import ConfigError


def test_digits_is_the_default_real_dataset():
    d = data.load("digits")
    assert d.input_shape == (1, 8, 8) and d.classes == 10
    assert len(d.y_train) + len(d.y_test) == 1797
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0


def test_synthetic_is_deterministic():
    a, b = data.load("synthetic:100"), data.load("synthetic:100")
    assert torch.equal(a.x_train, b.x_train) and len(a.y_train) == 100


def test_stream_depends_only_on_seed_worker_step():
    d = data.load("synthetic:200")
    shards = data.shard(d.y_train, 4, seed=3)
    s1 = data.WorkerStream(d, shards[2], 2, 3, 16)
    s2 = data.WorkerStream(d, shards[2], 2, 3, 16)
    for step in (5, 0, 7, 5):                       # any order, any process
        assert torch.equal(s1.batch(step)[0], s2.batch(step)[0])
    other = data.WorkerStream(d, shards[2], 2, 4, 16)
    assert not torch.equal(s1.batch(0)[0], other.batch(0)[0])


def test_stream_walks_epochs_without_repeats():
    d = data.load("synthetic:40")
    idx = data.shard(d.y_train, 2, seed=0)[0]              # 20 samples
    s = data.WorkerStream(d, idx, 0, 0, 8)
    seen = torch.cat([s.batch(t)[1] for t in range(5)])     # 40 samples = 2 epochs
    first = torch.cat([s.batch(0)[0], s.batch(1)[0], s.batch(2)[0][:4]])
    rows = {tuple(r.tolist()) for r in first}
    assert len(rows) == 20 and len(seen) == 40
    assert s.epochs(5) == 2.0


@pytest.mark.parametrize("scheme", ["iid", "label-skew"])
def test_shards_partition_the_training_set(scheme):
    d = data.load("digits")
    shards = data.shard(d.y_train, 5, seed=1, scheme=scheme, alpha=0.3)
    joined = np.concatenate(shards)
    assert len(joined) == len(d.y_train) and len(np.unique(joined)) == len(joined)
    assert all(len(s) for s in shards)
    if scheme == "label-skew":       # few classes dominate each worker
        top = [np.bincount(d.y_train[s].numpy(), minlength=10).max() / len(s) for s in shards]
        assert np.mean(top) > 0.25


def test_more_workers_than_samples():
    d = data.load("synthetic:3")
    with pytest.raises(ConfigError, match="4 workers but only 3 training samples"):
        data.shard(d.y_train, 4, 0)


def test_hdf5_dataset(tmp_path):
    path = tmp_path / "d.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f["x"] = rng.normal(size=(50, 5)).astype(np.float32)
        f["y"] = rng.integers(0, 3, 50)
    d = data.load(f"hdf5:{path}")
    assert len(d.y_train) == 45 and len(d.y_test) == 5 and d.input_shape == (5,)
    with h5py.File(path, "a") as f:
        f["x_test"] = rng.normal(size=(7, 5)).astype(np.float32)
        f["y_test"] = rng.integers(0, 3, 7)
    assert len(data.load(f"hdf5:{path}").y_test) == 7
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["inputs"] = np.zeros((3, 2))
    with pytest.raises(ConfigError, match="no dataset 'x'"):
        data.load(f"hdf5:{bad}")


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 1, -1, 2]), "labels must be >= 0"),
    (np.array([0.0, 1.5, 2.0, 1.0]), "labels must be whole numbers"),
    (np.zeros((4, 2)), "labels must be one-dimensional"),
])
def test_hdf5_bad_labels(tmp_path, labels, message):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((4, 3), np.float32)
        f["y"] = labels
    with pytest.raises(ConfigError, match=message):
        data.load(f"hdf5:{path}")


def test_hdf5_test_pair_and_label_range(tmp_path):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((4, 3), np.float32)
        f["y"] = np.array([0, 1, 2, 10 ** 7])
    with pytest.raises(ConfigError, match="class indices below 1000000"):
        data.load(f"hdf5:{path}")
    with h5py.File(path, "a") as f:
        f["y"][...] = [0, 1, 2, 1]
        f["x_test"] = np.zeros((2, 3), np.float32)
    with pytest.raises(ConfigError, match="x_test and y_test go together"):
        data.load(f"hdf5:{path}")


def _hdf5_file(path, **datasets):
    """An HDF5 file of 20 samples (``x`` 20 x 3 zeros, ``y`` two classes), ``datasets`` replacing
    or adding to them."""
    with h5py.File(path, "w") as f:
        for key, value in {"x": np.zeros((20, 3), np.float32), "y": np.arange(20) % 2,
                           **datasets}.items():
            if isinstance(value, str):          # "group"
                f.create_group(key)
            else:
                f[key] = value
    return f"hdf5:{path}"


NAN_AT_7 = np.where(np.arange(60).reshape(20, 3) == 7, np.nan, 0.0)


@pytest.mark.parametrize("datasets, message", [
    ({"x": np.full((20, 3), b"1.5")},
     "dataset 'x': inputs must be numbers (bool, integer or floating point), got dtype |S3 (strings)"),
    ({"x": np.array([["a"] * 3] * 20, dtype=h5py.string_dtype())},
     "dataset 'x': inputs must be numbers (bool, integer or floating point), got dtype object"),
    ({"x": np.ones((20, 3), np.complex64)}, "dataset 'x': inputs must be numbers (bool, integer or "
                                            "floating point), got dtype complex64 (complex numbers)"),
    ({"x": np.zeros(20, dtype=[("a", "f4"), ("b", "i4")])}, "got dtype [('a', '<f4'), ('b', '<i4')] "
                                                            "(compound or opaque)"),
    ({"x": NAN_AT_7}, "dataset 'x': inputs must be finite, found nan at index (2, 1) "
                      "(1 non-finite values in all)"),
    ({"x": np.full((20, 3), -np.inf)}, "dataset 'x': inputs must be finite, found -inf at index (0, 0) "
                                       "(60 non-finite values in all)"),
    ({"x": np.full((20, 3), 1e300)}, "dataset 'x': inputs must be finite, found 1e+300 (beyond "
                                     "float32's range) at index (0, 0)"),
    ({"x_test": np.full((4, 3), np.nan), "y_test": np.arange(4) % 2},
     "dataset 'x_test': inputs must be finite, found nan at index (0, 0)"),
    ({"y": np.array([b"cat", b"dog"] * 10)},
     "dataset 'y': labels must be whole numbers (class indices), got dtype |S3 (strings)"),
    ({"y": np.array(["cat", "dog"] * 10, dtype=h5py.string_dtype())},
     "dataset 'y': labels must be whole numbers (class indices), got dtype object (strings or objects)"),
    ({"y": np.where(np.arange(20) == 5, np.nan, 1.0)},
     "dataset 'y': labels must be whole numbers (class indices), found nan at index 5"),
    ({"y": np.where(np.arange(20) == 3, np.inf, 0.0)}, "found inf at index 3"),
    ({"y": np.array([True, False] * 10)}, "got dtype bool (booleans)"),
    ({"x": "group"}, ": 'x' is a group, not a dataset"),
])
def test_hdf5_bad_values_name_the_file_and_dataset(tmp_path, datasets, message):
    spec = _hdf5_file(tmp_path / "d.h5", **datasets)
    with pytest.raises(ConfigError) as info:
        data.load(spec)
    assert str(info.value).startswith(f"--data {spec}")
    assert message in str(info.value)


def test_hdf5_numbers_of_any_real_type_are_inputs(tmp_path):
    for dtype in (np.bool_, np.uint8, np.int64, np.float16, np.float64):
        d = data.load(_hdf5_file(tmp_path / "d.h5", x=np.ones((20, 3), dtype), y=np.arange(20.0) % 2))
        assert d.x_train.dtype == torch.float32 and bool(d.x_train.eq(1).all())
        assert d.y_train.dtype == torch.int64


def test_hdf5_bad_inputs_stop_prepare_on_every_rank(tmp_path):
    """The error is a ConfigError raised while loading, inside prepare()'s agreement."""
    from mpi4py import MPI
    from mpisgd.app import train
    from mpisgd.app.config import from_sources
    spec = _hdf5_file(tmp_path / "d.h5", x=NAN_AT_7)
    cfg = from_sources(None, dict(data=spec, steps=5, threads=1))
    with pytest.raises(ConfigError, match=r"dataset 'x': inputs must be finite, found nan"):
        train.prepare(cfg, MPI.COMM_SELF)


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "d.h5"
    path.write_text("hello")
    with pytest.raises(ConfigError, match="not a readable HDF5 file"):
        data.load(f"hdf5:{path}")


def test_cifar10_pickle_batches(tmp_path):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                         b"labels": list(rng.integers(0, 10, 4))}, f)
    d = data.load(f"cifar10:{tmp_path}")
    assert d.input_shape == (3, 32, 32) and len(d.y_train) == 20 and len(d.y_test) == 4
    assert abs(d.x_train.mean().item()) < 1e-4
    os.remove(tmp_path / "test_batch")
    with pytest.raises(ConfigError, match="missing test_batch"):
        data.load(f"cifar10:{tmp_path}")


@pytest.mark.parametrize("spec, message", [
    ("hdf5:/no/such.h5", "no such file"), ("cifar10:/no/dir", "no such directory"),
    ("imagenet", "--data must be"), ("mnist", r"--data mnist:PATH needs a path"), ("synthetic:x", "integer N"),
])
def test_bad_data_specs(spec, message):
    with pytest.raises(ConfigError, match=message):
        data.load(spec)


@pytest.mark.parametrize("name, shape", [("linear", (64,)), ("mlp", (1, 8, 8)),
                                         ("cnn", (1, 8, 8)), ("resnet20", (3, 32, 32))])
def test_models_forward(name, shape):
    model = models.build(name, shape, 10)
    assert model(torch.randn(2, *shape)).shape == (2, 10)


def test_resnet20_has_the_paper_size():
    n = sum(p.numel() for p in models.build("resnet20", (3, 32, 32), 10).parameters())
    assert 0.26e6 < n < 0.28e6


def test_cnn_needs_images():
    with pytest.raises(ValueError, match="needs image inputs"):
        models.build("cnn", (32,), 10)
