"""Device selection and binding (mpisgd.device), with stand-in GPU counts: no GPU needed."""
import pytest
import torch
from mpi4py import MPI

from mpisgd import device as placement


@pytest.mark.parametrize("spec, want", [("auto", "auto"), ("CPU", "cpu"), ("cuda", "cuda"),
                                        ("cuda:3", "cuda:3"), (torch.device("cuda", 1), "cuda:1"),
                                        (torch.device("cpu"), "cpu")])
def test_parse(spec, want):
    assert placement.parse(spec) == want


@pytest.mark.parametrize("spec", ["gpu", "cpu:1", "cuda:-1", "auto:0", "", None, "cuda:x"])
def test_parse_refuses_with_the_option_name(spec):
    with pytest.raises(ValueError, match=r"^device must be auto, cpu, cuda or cuda:N"):
        placement.parse(spec)


@pytest.mark.parametrize("local_size, gpus", [(1, 1), (4, 4), (8, 4), (4, 1), (3, 2), (8, 8)])
def test_local_rank_binds_gpu_local_rank_mod_count(local_size, gpus):
    got = [placement.choose("cuda", r, gpus) for r in range(local_size)]
    assert got == [torch.device("cuda", r % gpus) for r in range(local_size)]
    assert [placement.choose("auto", r, gpus) for r in range(local_size)] == got
    used = {d.index for d in got}
    assert used == set(range(min(local_size, gpus)))     # every GPU used when ranks suffice


def test_auto_without_gpus_is_the_cpu_and_explicit_indices_are_kept():
    assert placement.choose("auto", 3, 0) == torch.device("cpu")
    assert placement.choose("cpu", 0, 8) == torch.device("cpu")
    assert placement.choose("cuda:2", 0, 4) == placement.choose("cuda:2", 3, 4) == torch.device("cuda", 2)


def test_cuda_without_a_visible_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match=r"^device cuda: no GPU is visible on host .*use --device cpu"):
        placement.check_available("cuda", gpus=0)
    with pytest.raises(ValueError, match=r"^device cuda:4: host .* shows only 2 GPU\(s\), cuda:0..cuda:1"):
        placement.check_available("cuda:4", gpus=2)
    placement.check_available("cpu", gpus=0)
    placement.check_available("auto", gpus=0)
    placement.check_available("cuda:1", gpus=2)


def test_ranks_sharing_a_gpu_is_one_warning_naming_the_sharing():
    text = placement.sharing(["GPU-a"] * 4, "node7")
    assert text.startswith("4 ranks share 1 GPU on host node7")
    assert placement.sharing(["a", "b", "a", "b", "a", "b", "a", "b"], "n").startswith("8 ranks share 2 GPUs")
    assert placement.sharing(["a", "b", "c", "d"], "n") is None
    assert placement.sharing([], "n") is None                # the CPU


def test_describe_for_the_summary_line():
    assert placement.describe([("a", "cpu", "")] * 4) == "cpu"
    assert (placement.describe([("a", "cuda:0", "G0"), ("a", "cuda:1", "G1")])
            == "cuda, one GPU per rank (2 ranks)")
    assert placement.describe([("a", "cuda:0", "G0")] * 4) == "cuda, 4 ranks on 1 GPU"
    # --gpus-per-task=1: every rank sees its own GPU as cuda:0
    assert (placement.describe([("a", "cuda:0", f"G{i}") for i in range(4)])
            == "cuda, one GPU per rank (4 ranks)")
    assert (placement.describe([("a", "cuda:0", "G0"), ("a", "cuda:1", "G1"), ("b", "cuda:0", "G0"),
                                ("b", "cuda:1", "G1")]) == "cuda, one GPU per rank (4 ranks, 2 hosts)")


def test_bind_on_one_rank_without_gpus():
    where = placement.bind(MPI.COMM_SELF, "auto", gpus=0)
    assert (where.device, where.local_rank, where.local_size) == (torch.device("cpu"), 0, 1)


def test_move_refuses_a_model_whose_parameters_are_replaced(monkeypatch):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monkeypatch.setattr(torch.__future__, "get_overwrite_module_params_on_conversion", lambda: True)
    with pytest.raises(RuntimeError, match="replaced the parameter objects"):
        placement.move(model, opt, torch.device("meta"))


def test_move_takes_the_optimizer_state_along():
    model = torch.nn.Linear(3, 2).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3, dtype=torch.float64)).sum().backward()
    opt.step()
    params = list(model.parameters())
    placement.move(model, opt, torch.device("cpu"))
    assert [p is q for p, q in zip(params, model.parameters())] == [True, True]
    assert all(torch.is_tensor(s["momentum_buffer"]) for s in opt.state.values())
