"""The byte-level language model: --data text:FILE's windows, the gpt model, its objective,
perplexity in the summary, the record and report, and the one-line refusals."""
import math
import re

import numpy as np
import pytest
import torch
from mpi4py import MPI

from mpisgd import data, gpt, models
from mpisgd.app import record, report, train
from mpisgd.app.config import from_sources
from mpisgd.app.logpoint import summary_line
from mpisgd.errors import ConfigError


def write_text(path, n=6000):
    """A text of ``n`` bytes with structure a small model learns: counting words."""
    words = " ".join(f"w{i % 17}" for i in range(n))
    path.write_bytes(words.encode()[:n])
    return str(path)


def test_windows_are_the_files_bytes_and_their_successors(tmp_path):
    path = write_text(tmp_path / "t.txt", 1000)
    raw = np.frombuffer(open(path, "rb").read(), np.uint8)
    d = data.load(f"text:{path}", context=16)
    assert d.classes == 256 and d.x_train.dtype == torch.int64
    assert d.input_shape == (16,)
    assert len(d.y_train) == (900 - 1) // 16 and len(d.y_test) == (100 - 1) // 16
    for i in (0, 3, len(d.y_train) - 1):                   # the training text, at stride 16
        assert list(d.x_train[i]) == list(raw[16 * i:16 * i + 16])
        assert list(d.y_train[i]) == list(raw[16 * i + 1:16 * i + 17])
    assert list(d.x_test[0]) == list(raw[900:916])          # the last tenth, contiguous


@pytest.mark.parametrize("size, model, message", [
    (100, "gpt:1,8,2,16", "--data text:{p}: 100 bytes are too few for the model's context of 16 (needs at least 170"),
    (5000, "mlp", "--data text:{p} needs a sequence model: --model gpt"),
])
def test_bad_text_is_refused_in_one_line(tmp_path, size, model, message):
    path = write_text(tmp_path / "t.txt", size)
    with pytest.raises(ConfigError, match="^" + re.escape(message.format(p=path))):
        data.load(f"text:{path}", context=models.context(model))


def test_a_sequence_model_needs_text_and_text_has_no_labels(tmp_path):
    with pytest.raises(ConfigError, match="a sequence model .--model gpt. needs --data text"):
        data.load("digits", context=64)
    d = data.load(f"text:{write_text(tmp_path / 't.txt')}", context=16)
    with pytest.raises(ConfigError, match="--shard label-skew needs one class label per sample"):
        data.shard(d.y_train, 2, 0, "label-skew")


@pytest.mark.parametrize("name, message", [
    ("gpt:2,130,4,64", "--model gpt:2,130,4,64: WIDTH 130 must be a multiple of HEADS 4"),
    ("gpt:2,128", "--model gpt:2,128: expected four positive integers LAYERS,WIDTH,HEADS,CONTEXT"),
    ("gpt:0,8,2,8", "--model gpt:0,8,2,8: expected four positive integers"),
    ("mlp:3", "--model mlp takes no arguments"),
    ("transformer", "--model must be one of linear, mlp, cnn, resnet20, gpt"),
])
def test_bad_model_names_are_refused_naming_the_flag(name, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        from_sources(None, {"model": name}).validate()


def test_gpt_default_shape_and_parameter_count():
    """gpt = gpt:2,128,4,64; parameters counted here from the architecture (GPT-2's layout
    with a tied head): embeddings, per block two LayerNorms, QKV, projection, the MLP."""
    net = models.build("gpt", (64,), 256)
    L, W, C, V = 2, 128, 64, 256
    block = 2 * 2 * W + (W * 3 * W + 3 * W) + (W * W + W) + (W * 4 * W + 4 * W) + (4 * W * W + W)
    assert sum(p.numel() for p in net.parameters()) == V * W + C * W + L * block + 2 * W
    assert gpt.DEFAULT == (L, W, 4, C)


def test_gpt_is_causal_and_predicts_every_position():
    """Logits B x C x 256; changing byte j changes no logit before position j."""
    torch.manual_seed(0)
    net = models.build("gpt:2,32,4,12", (12,), 256).eval()
    x = torch.randint(0, 256, (3, 12))
    out = net(x)
    assert out.shape == (3, 12, 256)
    x2 = x.clone()
    x2[:, 7] = (x2[:, 7] + 1) % 256
    out2 = net(x2)
    assert torch.equal(out[:, :7], out2[:, :7])
    assert not torch.allclose(out[:, 7:], out2[:, 7:])


def test_the_objective_is_the_mean_next_byte_cross_entropy():
    """models.loss against -log softmax at the target, averaged over every position here."""
    torch.manual_seed(1)
    out, y = torch.randn(2, 5, 256), torch.randint(0, 256, (2, 5))
    nll = [-torch.log_softmax(out[b, t], 0)[y[b, t]] for b in range(2) for t in range(5)]
    torch.testing.assert_close(models.loss(out, y), torch.stack(nll).mean())
    logits, labels = torch.randn(4, 10), torch.randint(0, 10, (4,))   # a classifier: unchanged
    torch.testing.assert_close(models.loss(logits, labels),
                               torch.nn.functional.cross_entropy(logits, labels))


def test_a_language_model_run_reports_perplexity(tmp_path, capsys):
    """One process: the summary's perplexity is exp(test loss), the record says it is a
    language model, report adds the perplexity column, and the model learned the text."""
    out = str(tmp_path / "lm.h5")
    cfg = from_sources(None, dict(model="gpt:1,32,2,16", data=f"text:{write_text(tmp_path / 't.txt')}",
                                  optimizer="adamw", lr=0.01, steps=40, log_every=20,
                                  batch_size=8, out=out, threads=1))
    summary = train.run(cfg, MPI.COMM_SELF, quiet=True)
    assert summary["perplexity"] == pytest.approx(math.exp(summary["test_loss"]))
    assert summary["test_loss"] < math.log(256) - 2                 # well below chance
    assert f"test perplexity {summary['perplexity']:.3f}" in summary_line(summary)
    rec = record.read(out)
    assert rec["attrs"]["task"] == "language model"
    report.main([out], None, 0.1)
    table = capsys.readouterr().out
    assert "final ppl" in table and f"{summary['perplexity']:.3f}" in table
