"""``--data mnist:DIR``: IDX files written here (gzipped and not) read back exactly, every bad
file refused in one line naming it, and the real Fashion-MNIST where Debian installed it."""
import gzip
import os
import re
import struct

import numpy as np
import pytest

from mpisgd import data, idx
from mpisgd.errors import ConfigError

FASHION = "/usr/share/datasets/fashion-mnist"    # Debian's dataset-fashion-mnist


def write(path, array, code=0x08):
    """An IDX file written byte by byte from the format's definition (not through idx.py)."""
    dtype = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}[code]
    raw = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape) \
        + np.asarray(array, dtype=dtype).tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(raw)
    return raw


def a_set(directory, n=6, m=4, h=5, w=3, gz=True, prefix=""):
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n, h, w), dtype=np.uint8),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n, dtype=np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (m, h, w), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, m, dtype=np.uint8)}
    for name, a in arrays.items():
        write(os.path.join(directory, prefix + name + (".gz" if gz else "")), a)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_a_set_reads_back_as_images_in_0_1_and_labels(tmp_path, gz):
    arrays = a_set(str(tmp_path), gz=gz)
    d = data.load(f"mnist:{tmp_path}")
    assert d.x_train.shape == (6, 1, 5, 3) and d.x_test.shape == (4, 1, 5, 3)
    np.testing.assert_array_equal(d.x_train[:, 0].numpy() * 255,
                                  arrays["train-images-idx3-ubyte"].astype(np.float32))
    np.testing.assert_array_equal(d.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert d.y_train.dtype.is_floating_point is False and d.x_train.max() <= 1.0


def test_emnist_names_and_wider_types_read_back(tmp_path):
    a_set(str(tmp_path), prefix="emnist-letters-")
    assert data.load(f"mnist:{tmp_path}").x_train.shape == (6, 1, 5, 3)
    values = np.array([[-3, 7], [1000, -32768]])
    write(str(tmp_path / "s.idx"), values, 0x0B)
    np.testing.assert_array_equal(idx.read(str(tmp_path / "s.idx")), values)
    write(str(tmp_path / "f.idx"), np.array([0.5, -1.25]), 0x0D)
    np.testing.assert_array_equal(idx.read(str(tmp_path / "f.idx")), [0.5, -1.25])


def test_a_truncated_file_is_refused_naming_it_and_its_sizes(tmp_path):
    a_set(str(tmp_path), gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    raw = path.read_bytes()
    path.write_bytes(raw[:-7])
    with pytest.raises(ConfigError, match=rf"^--data mnist: {path}: truncated: holds "
                                          rf"{len(raw) - 7} bytes, its header \(6 x 5 x 3 uint8\) "
                                          rf"announces {len(raw)}$"):
        data.load(f"mnist:{tmp_path}")


@pytest.mark.parametrize("content, says", [
    (b"\x89HDF\r\n\x1a\n", "not an IDX file (its first bytes are 89 48 44 46"),
    (b"", "not an IDX file (its first bytes are missing"),
    (bytes([0, 0, 8, 3, 0, 0]), "truncated in its header (6 bytes)"),
])
def test_a_file_that_is_not_idx_is_refused_naming_it(tmp_path, content, says):
    a_set(str(tmp_path), gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(content)
    with pytest.raises(ConfigError, match="t10k-labels-idx1-ubyte: " + re.escape(says)):
        data.load(f"mnist:{tmp_path}")


def test_missing_ambiguous_and_mismatched_files_are_refused(tmp_path):
    a_set(str(tmp_path))
    os.remove(tmp_path / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(ConfigError, match=r"needs one file of test images named "
                                          r"\*t10k-images-idx3-ubyte\[\.gz\] or "
                                          r"\*test-images-idx3-ubyte\[\.gz\], found none"):
        data.load(f"mnist:{tmp_path}")
    a_set(str(tmp_path))
    write(str(tmp_path / "t10k-images-idx3-ubyte"), np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ConfigError, match="found 2: t10k-images-idx3-ubyte, "
                                          "t10k-images-idx3-ubyte.gz"):
        data.load(f"mnist:{tmp_path}")
    os.remove(tmp_path / "t10k-images-idx3-ubyte")
    write(str(tmp_path / "train-labels-idx1-ubyte.gz"), np.zeros(5, np.uint8))
    with pytest.raises(ConfigError, match="6 train images but 5 labels"):
        data.load(f"mnist:{tmp_path}")
    with pytest.raises(ConfigError, match="no such directory"):
        data.load(f"mnist:{tmp_path / 'nope'}")


@pytest.mark.skipif(not os.path.isdir(FASHION), reason=f"no Fashion-MNIST at {FASHION} "
                    "(Debian: apt install dataset-fashion-mnist)")
def test_the_installed_fashion_mnist_reads_as_published():
    d = data.load(f"mnist:{FASHION}")
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert d.classes == 10 and d.y_train[:5].tolist() == [9, 0, 0, 3, 0]   # boot, tops, dress
    assert (d.y_train.bincount() == 6000).all() and (d.y_test.bincount() == 1000).all()
