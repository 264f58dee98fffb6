"""The IDX files of MNIST-style data sets (MNIST, Fashion-MNIST, KMNIST, EMNIST): ``--data mnist:DIR``.

An IDX file is a big-endian array: two zero bytes, a type code (0x08
unsigned byte, 0x09 signed byte, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64), the number of dimensions d, then d 4-byte sizes and the
values (LeCun et al., the MNIST page). A directory holds four of them,
gzipped or not, named as the sets ship them::

    train-images-idx3-ubyte[.gz]   train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]    t10k-labels-idx1-ubyte[.gz]

(EMNIST's ``emnist-SPLIT-train-images-idx3-ubyte.gz`` and ``...-test-...``
too: a file whose name ends so is found under any prefix, and more than one
candidate is an error naming them.) Images become float32 N x 1 x H x W in
[0, 1] (unsigned bytes divided by 255), labels int64. Every check names the
file: a bad header, a size that disagrees with it (a truncated download),
image and label counts that differ.
"""
from __future__ import annotations

import gzip
import os

import numpy as np

from .errors import ConfigError

#: IDX type code -> numpy big-endian dtype.
TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

#: The four files of a set: (what, the name's ending before an optional .gz).
FILES = (("training images", ("train-images-idx3-ubyte",)),
         ("training labels", ("train-labels-idx1-ubyte",)),
         ("test images", ("t10k-images-idx3-ubyte", "test-images-idx3-ubyte")),
         ("test labels", ("t10k-labels-idx1-ubyte", "test-labels-idx1-ubyte")))


def read(path: str) -> np.ndarray:
    """The array in IDX file ``path`` (gzipped if it ends in ``.gz``), in native byte order;
    ``ConfigError`` naming the file when it is not one, or holds more or fewer bytes than
    its header announces."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:      # a damaged gzip stream too
        raise ConfigError(f"--data mnist: {path}: cannot read it ({err})") from None
    if len(data) < 4 or data[0] or data[1] or data[2] not in TYPES:
        raise ConfigError(f"--data mnist: {path}: not an IDX file (its first bytes are "
                          f"{data[:4].hex(' ') or 'missing'}; an IDX file starts 00 00 TYPE DIMS)")
    dtype, dims = np.dtype(TYPES[data[2]]), data[3]
    head = 4 + 4 * dims
    if len(data) < head:
        raise ConfigError(f"--data mnist: {path}: truncated in its header ({len(data)} bytes)")
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", dims, 4))
    need = head + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != need:
        what = "truncated" if len(data) < need else "longer than its header says"
        raise ConfigError(f"--data mnist: {path}: {what}: holds {len(data)} bytes, its header "
                          f"({' x '.join(map(str, shape))} {dtype.name}) announces {need}")
    return np.frombuffer(data, dtype, offset=head).reshape(shape).astype(dtype.newbyteorder("="))


def find(directory: str, what: str, endings: tuple[str, ...]) -> str:
    """The one file in ``directory`` whose name ends in one of ``endings`` (or it + .gz)."""
    names = sorted(n for n in os.listdir(directory)
                   if any(n.endswith(e) or n.endswith(e + ".gz") for e in endings))
    if len(names) != 1:
        said = f"found {len(names)}: {', '.join(names)}" if names else "found none"
        raise ConfigError(f"--data mnist:{directory}: needs one file of {what} named "
                          f"{' or '.join(f'*{e}[.gz]' for e in endings)}, {said}")
    return os.path.join(directory, names[0])


def load(directory: str) -> tuple:
    """``(x, y, x_test, y_test)`` of the IDX set in ``directory`` (module docstring)."""
    x, y, xt, yt = (read(find(directory, what, endings)) for what, endings in FILES)
    out = []
    for images, labels, kind in ((x, y, "train"), (xt, yt, "test")):
        if images.ndim != 3 or labels.ndim != 1:
            raise ConfigError(f"--data mnist:{directory}: {kind} images must be N x H x W and "
                              f"labels N, got {images.shape} and {labels.shape}")
        if len(images) != len(labels):
            raise ConfigError(f"--data mnist:{directory}: {len(images)} {kind} images but "
                              f"{len(labels)} labels")
        scale = 255.0 if images.dtype == np.uint8 else 1.0
        out += [(images.astype(np.float32) / scale)[:, None], labels.astype(np.int64)]
    return tuple(out)
