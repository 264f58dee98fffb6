"""``--data text:FILE``: a text as byte windows for a language model (``--model gpt``).

The file's bytes are the tokens (a vocabulary of 256: any encoding, no
tokenizer). The first 90% is the training text, the last 10% the test text
(a contiguous split, as nanoGPT's: no test window overlaps a training one).
Each part is cut into windows of C bytes, C the model's context, at stride C:
sample i is ``x = b[iC : (i+1)C]`` with targets ``y = b[iC+1 : (i+1)C+1]``
(every position predicts the next byte), so an epoch is one pass over the
training text. Workers draw windows as they draw images: by (seed, worker,
step) from their shard (:class:`~mpisgd.data.WorkerStream`).

The test loss is in nats per byte; its exponential is the perplexity
``report`` and the summary show.
"""
from __future__ import annotations

import numpy as np

from .errors import ConfigError

VOCAB = 256
TEST_FRACTION = 0.1


def perplexity(loss):
    """exp(loss) of a loss in nats per byte (a number or an array), capped where exp
    overflows a float64 (a loss of 700 or more)."""
    return np.exp(np.minimum(loss, 700.0))


def windows(tokens: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-byte targets of the stride-``context`` windows of ``tokens``."""
    n = (len(tokens) - 1) // context
    x = tokens[:n * context].reshape(n, context)
    y = tokens[1:n * context + 1].reshape(n, context)
    return x, y


def load(path: str, context: int | None) -> tuple:
    """``(x, y, x_test, y_test)`` (int64) of ``path`` for windows of ``context`` bytes;
    ``ConfigError`` naming the problem (no sequence model, a text too short)."""
    where = f"--data text:{path}"
    if context is None:
        raise ConfigError(f"{where} needs a sequence model: --model gpt[:L,W,H,C]")
    try:
        with open(path, "rb") as f:
            tokens = np.frombuffer(f.read(), dtype=np.uint8).astype(np.int64)
    except OSError as err:
        raise ConfigError(f"{where}: cannot read it ({err.strerror})") from None
    cut = len(tokens) - int(TEST_FRACTION * len(tokens))
    need = 10 * (context + 1)       # one window of C + 1 bytes in the test tenth
    if len(tokens) < need:
        raise ConfigError(f"{where}: {len(tokens)} bytes are too few for the model's context "
                          f"of {context} (needs at least {need}: one window of {context} + 1 "
                          f"bytes in the test tenth); give a longer text or a smaller context")
    return (*windows(tokens[:cut], context), *windows(tokens[cut:], context))
