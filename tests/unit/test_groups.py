"""Groups of ranks, in one process: the blocks, the checks, and the oracle's expansion."""
import pytest
import torch

from mpisgd import groups, reference
from mpisgd.errors import OptionError


@pytest.mark.parametrize("n, parts", [(6, 4), (10, 3), (3, 3), (2, 4), (1000003, 8)])
def test_blocks_cover_the_tensor_once_in_order_and_differ_by_one_at_most(n, parts):
    blocks = groups.bounds(n, parts)
    assert len(blocks) == parts and blocks[0][0] == 0 and blocks[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    sizes = [hi - lo for lo, hi in blocks]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("value, out", [(1, 1), ("4", 4), (2.0, 2), ("node", "node")])
def test_group_size_reads_a_positive_integer_or_node(value, out):
    assert groups.parse(value) == out


@pytest.mark.parametrize("value", ["two", 0, -2, 1.5, "nodes"])
def test_a_bad_group_size_says_what_it_must_be(value):
    with pytest.raises(ValueError, match="a positive integer or node"):
        groups.parse(value)


def test_groups_must_divide_the_ranks_and_nodes_must_match():
    assert groups.check(8, 4) == 2 and groups.check(4, 4) == 1 and groups.check(4, 1) == 4
    with pytest.raises(OptionError, match="must divide the 6 ranks of the job into equal "
                                          "groups, got 4"):
        groups.check(6, 4)
    with pytest.raises(OptionError, match="node needs the same number of ranks on every node, "
                                          "got 4, 2"):
        groups.check(6, 4, node_sizes=[4, 2])
    assert groups.size_of("node", 8) == 8 and groups.size_of(2, 8) == 2


def test_the_expanded_mixing_matrix_sends_each_groups_mean_where_w_sends_its_worker():
    """Written out for m = 2 workers, v = 1 centre, groups of 2: replica columns 0-3, the
    centre 4 (column convention X <- X M)."""
    a = 0.25
    W = torch.tensor([[1 - a, 0, a], [0, 1 - a, a], [a, a, 1 - 2 * a]], dtype=torch.float64)
    M = reference.expand(W, 2, v=1)
    h = (1 - a) / 2
    want = torch.tensor([[h, h, 0, 0, a / 2],
                         [h, h, 0, 0, a / 2],
                         [0, 0, h, h, a / 2],
                         [0, 0, h, h, a / 2],
                         [a, a, a, a, 1 - 2 * a]], dtype=torch.float64)
    assert torch.allclose(M, want)
    B = torch.block_diag(*[torch.full((2, 2), 0.5, dtype=torch.float64)] * 2)
    B = torch.block_diag(B, torch.ones(1, 1, dtype=torch.float64))
    assert torch.allclose(B @ M, M)          # a round starts from the group's mean
