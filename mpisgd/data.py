"""Datasets and per-worker sample streams.

A dataset spec names where the data comes from:

* ``digits`` (default): scikit-learn's bundled 8x8 handwritten digits
  (1797 images, 10 classes), a fixed 80/20 train/test split.
* ``synthetic`` or ``synthetic:N``: N (default 4096) training points from a
  seeded mixture of 10 Gaussian classes in 32 dimensions; no file, no
  extra dependency.
* ``cifar10:DIR``: the standard python-pickle batches (``data_batch_1..5``
  and ``test_batch``) in DIR, normalised per channel.
* ``hdf5:FILE``: datasets ``x`` (N x ...) and ``y`` (N integer labels), and
  optionally ``x_test``/``y_test``; without them a seeded 10% is held out.
* ``mnist:DIR``: the four IDX files of MNIST, Fashion-MNIST, KMNIST or an
  EMNIST split, gzipped or not (:mod:`mpisgd.idx`).
* ``text:FILE``: a text's bytes as windows of the model's context for a
  language model (:mod:`mpisgd.text`): inputs and targets are B x C byte
  indices, 256 classes.

A worker's stream depends only on (seed, worker index, step), never on its
rank or on timing: worker w draws its batch at step t from its shard, walking
through per-epoch permutations seeded by (seed, w, epoch). Sharding is
``iid`` (a seeded equal split) or ``label-skew``: per class, proportions
over workers drawn from Dirichlet(alpha), the usual non-iid benchmark
(small alpha: each worker sees few classes).
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch

from . import streams
from .errors import ConfigError
from .staging import upload
from .streams import generator


@dataclass
class Dataset:
    """Tensors of one dataset: float32 inputs, int64 labels, train and test."""
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device) -> "Dataset":
        """This dataset with its tensors on ``device`` (a copy once, at start-up: the
        datasets here fit in a GPU's memory, so batches never cross the bus)."""
        move = lambda t: t.to(device)   # noqa: E731
        return Dataset(self.name, move(self.x_train), move(self.y_train), move(self.x_test),
                       move(self.y_test), self.classes)


def _split(x, y, fraction: float, seed: int):
    order = generator(streams.HOLD_OUT, seed).permutation(len(y))
    n_test = max(1, int(round(fraction * len(y))))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _digits() -> tuple:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError("--data digits needs scikit-learn: pip install 'mpisgd[digits]' "
                          "(or train on --data synthetic)") from None
    bunch = load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return _split(x, bunch.target.astype(np.int64), 0.2, 0)


def _synthetic(n: int) -> tuple:
    rng = generator(streams.SYNTHETIC, n)
    classes, dim, n_test = 10, 32, max(1, n // 4)
    centres = rng.normal(0.0, 1.0, (classes, dim)).astype(np.float32)
    y = rng.integers(0, classes, n + n_test)
    x = centres[y] + rng.normal(0.0, 1.0, (n + n_test, dim)).astype(np.float32)
    return x[:n], y[:n], x[n:], y[n:]


def _cifar10(path: str) -> tuple:
    def batch(name):
        with open(os.path.join(path, name), "rb") as f:
            d = pickle.load(f, encoding="bytes")
        return (np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32),
                np.asarray(d[b"labels"], dtype=np.int64))
    names = [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in names + ["test_batch"] if not os.path.exists(os.path.join(path, n))]
    if missing:
        raise ConfigError(f"--data cifar10:{path}: missing {', '.join(missing)} "
                          "(expected the python-pickle batches of cifar-10-batches-py)")
    parts = [batch(n) for n in names]
    x = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
    y = np.concatenate([p[1] for p in parts])
    xt, yt = batch("test_batch")
    xt = xt.astype(np.float32) / 255.0
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    std = x.std(axis=(0, 2, 3), keepdims=True)
    return (x - mean) / std, y, (xt - mean) / std, yt


MAX_CLASSES = 1_000_000


_KINDS = {"S": "strings", "U": "strings", "O": "strings or objects", "V": "compound or opaque",
          "c": "complex numbers", "b": "booleans", "M": "dates", "m": "time spans"}


def _numeric(dataset, where: str, what: str, kinds: str) -> None:
    """``ConfigError`` naming ``where`` unless ``dataset``'s dtype is of one of ``kinds``
    (numpy's kind letters), checked before anything is read."""
    dtype = dataset.dtype
    if dtype.kind not in kinds:
        words = f" ({_KINDS[dtype.kind]})" if dtype.kind in _KINDS else ""
        raise ConfigError(f"{where}: {what}, got dtype {dtype}{words}")


def _first_bad(bad: np.ndarray) -> tuple:
    """The index of the first ``True`` of ``bad``, as a tuple of ints."""
    return tuple(int(i) for i in np.argwhere(bad)[0])


def _labels(dataset, where: str) -> np.ndarray:
    """Class labels as int64; ``ConfigError`` naming ``where`` unless they are whole
    numbers >= 0 (integers, or finite floats without a fraction)."""
    _numeric(dataset, where, "labels must be whole numbers (class indices)", "iuf")
    y = np.asarray(dataset[()])
    if y.ndim != 1:
        raise ConfigError(f"{where}: labels must be one-dimensional, got shape {y.shape}")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            at = _first_bad(bad)
            raise ConfigError(f"{where}: labels must be whole numbers (class indices), found "
                              f"{y[at]} at index {at[0]}")
    if len(y) and y.min() < 0:
        raise ConfigError(f"{where}: labels must be >= 0, found {y.min()}")
    if len(y) and y.max() >= MAX_CLASSES:
        raise ConfigError(f"{where}: labels must be class indices below {MAX_CLASSES}, found {y.max()}")
    return y.astype(np.int64)


def _numbers(dataset, where: str) -> np.ndarray:
    """Inputs as float32, one sample per row (N x features...); ``ConfigError`` naming
    ``where`` unless of a real number type (bool, integer, float) and finite as float32."""
    _numeric(dataset, where, "inputs must be numbers (bool, integer or floating point)", "biuf")
    x = np.asarray(dataset, np.float32)
    if x.ndim < 2:
        raise ConfigError(f"{where}: inputs need one row per sample (N x features), got shape {x.shape}")
    bad = ~np.isfinite(x)
    if bad.any():
        at = _first_bad(bad)
        value = dataset[at]          # as stored: an overflow of float32 reads as inf
        beyond = " (beyond float32's range)" if np.isfinite(value) else ""
        raise ConfigError(f"{where}: inputs must be finite, found {value}{beyond} at index "
                          f"{at} ({int(bad.sum())} non-finite values in all)")
    return x


def _hdf5(path: str) -> tuple:
    import h5py
    where = f"--data hdf5:{path}"
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ConfigError(f"{where}: not a readable HDF5 file ({err})") from None

    def read(key: str, parse):
        """``parse(dataset, where)`` of dataset ``key``; ``ConfigError`` naming it."""
        place = f"{where}, dataset '{key}'"
        if not isinstance(f[key], h5py.Dataset):
            raise ConfigError(f"{where}: '{key}' is a {type(f[key]).__name__.lower()}, not a dataset")
        try:
            return parse(f[key], place)
        except OSError as err:       # a filter that is not installed, a damaged file
            raise ConfigError(f"{place}: cannot read it ({err})") from None

    with f:
        for key in ("x", "y"):
            if key not in f:
                raise ConfigError(f"{where}: no dataset '{key}' in the file "
                                  f"(it has: {', '.join(f.keys()) or 'nothing'})")
        if ("x_test" in f) != ("y_test" in f):
            raise ConfigError(f"{where}: x_test and y_test go together; the file has only one")
        y = read("y", _labels)
        test = None
        if "x_test" in f:
            test = read("x_test", _numbers), read("y_test", _labels)
        x = read("x", _numbers)
    if len(x) != len(y):
        raise ConfigError(f"{where}: x has {len(x)} rows but y has {len(y)}")
    if test is not None:
        if len(test[0]) != len(test[1]):
            raise ConfigError(f"{where}: x_test has {len(test[0])} rows but y_test has {len(test[1])}")
        return x, y, test[0], test[1]
    if len(y) < 2:
        raise ConfigError(f"{where}: needs at least 2 samples to hold out a test set, got {len(y)}")
    return _split(x, y, 0.1, 0)


def load(spec: str, context: int | None = None) -> Dataset:
    """Load the dataset named by ``spec``; ``ConfigError`` for a bad spec or a missing file.
    ``context``: a sequence model's window length (``text:``)."""
    kind, _, arg = spec.partition(":")
    if kind == "digits" and not arg:
        parts = _digits()
    elif kind == "synthetic":
        try:
            n = int(arg) if arg else 4096
        except ValueError:
            raise ConfigError(f"--data synthetic:N needs an integer N, got {arg!r}") from None
        if n < 1:
            raise ConfigError(f"--data synthetic:N needs N >= 1, got {n}")
        parts = _synthetic(n)
    elif kind in ("cifar10", "hdf5", "mnist", "text"):
        if not arg:
            raise ConfigError(f"--data {kind}:PATH needs a path")
        directory = kind not in ("hdf5", "text")
        if not (os.path.isdir(arg) if directory else os.path.exists(arg)):
            raise ConfigError(f"--data {spec}: no such {'directory' if directory else 'file'}: {arg}")
        if kind == "mnist":
            from . import idx
            parts = idx.load(arg)
        elif kind == "text":
            from . import text
            parts = text.load(arg, context)
        else:
            parts = _cifar10(arg) if kind == "cifar10" else _hdf5(arg)
    else:
        raise ConfigError(f"--data must be digits, synthetic[:N], cifar10:DIR, mnist:DIR, "
                          f"hdf5:FILE or text:FILE, got {spec!r}")
    x, y, xt, yt = (torch.from_numpy(np.ascontiguousarray(a)) for a in parts)
    if len(y) == 0 or len(yt) == 0:
        raise ConfigError(f"--data {spec}: the {'training' if len(y) == 0 else 'test'} set is empty")
    if x.shape[1:] != xt.shape[1:]:
        raise ConfigError(f"--data {spec}: training inputs have shape {tuple(x.shape[1:])} "
                          f"but test inputs {tuple(xt.shape[1:])}")
    if kind == "text":
        return Dataset(kind, x, y, xt, yt, 256)       # bytes, whichever occur
    if context is not None:
        raise ConfigError(f"--data {spec}: a sequence model (--model gpt) needs --data text:FILE")
    classes = int(max(y.max().item(), yt.max().item()) + 1)
    return Dataset(kind, x, y, xt, yt, classes)


def shard(labels: torch.Tensor, workers: int, seed: int, scheme: str = "iid",
          alpha: float = 0.5) -> list[np.ndarray]:
    """Split training indices among ``workers``; each shard non-empty.

    ``iid``: a seeded permutation cut into equal parts. ``label-skew``: for
    each class, Dirichlet(alpha) proportions over workers.
    """
    n = len(labels)
    if workers > n:
        raise ConfigError(f"{workers} workers but only {n} training samples: "
                          "each worker needs at least one (use fewer ranks or more data)")
    if scheme == "iid":
        return [np.sort(s) for s in np.array_split(generator(streams.SHARD_IID, seed).permutation(n), workers)]
    if scheme != "label-skew":
        raise ConfigError(f"--shard must be iid or label-skew, got {scheme!r}")
    if labels.dim() != 1:
        raise ConfigError("--shard label-skew needs one class label per sample; a text's "
                          "windows have none (use --shard iid)")
    y = labels.numpy()
    for attempt in range(100):
        rng = generator(streams.SHARD_SKEW, seed, attempt)
        parts = [[] for _ in range(workers)]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(workers, alpha))) * len(idx)).astype(int)[:-1]
            for w, piece in enumerate(np.split(idx, cuts)):
                parts[w].extend(piece.tolist())
        if all(parts):
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ConfigError(f"label-skew sharding with alpha={alpha} left a worker without data "
                      "after 100 draws: raise --skew-alpha or use fewer workers")


class WorkerStream:
    """The mini-batches of one worker: ``batch(step)`` depends only on (seed, worker, step).

    Positions t*B .. (t+1)*B-1 run through the worker's shard in epochs, each
    epoch a fresh permutation seeded by (seed, worker, epoch). Batches are
    gathered where ``data`` lives: on a GPU, with no host-device
    synchronisation (the permutation is drawn on the host once per epoch and
    copied asynchronously from pinned memory).
    """

    def __init__(self, data: Dataset, indices: np.ndarray, worker: int, seed: int,
                 batch_size: int):
        self.data = data
        self.indices = torch.from_numpy(indices).to(data.x_train.device)
        self.worker, self.seed, self.batch_size = worker, seed, batch_size
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        perm = self._perms.get(epoch)
        if perm is None:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            order = torch.from_numpy(generator(streams.EPOCH, self.seed, self.worker, epoch).permutation(len(self.indices)))
            perm = self.indices[upload(order, self.indices.device)]   # once per epoch, no stall
            self._perms[epoch] = perm
        return perm

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, b = len(self.indices), self.batch_size
        first, last = step * b, (step + 1) * b
        idx = torch.cat([self._perm(e)[max(first - e * n, 0): min(last - e * n, n)]
                         for e in range(first // n, (last - 1) // n + 1)])
        return self.data.x_train[idx], self.data.y_train[idx]

    def epochs(self, step: int) -> float:
        """Passes over this worker's shard completed after ``step`` steps."""
        return step * self.batch_size / len(self.indices)
