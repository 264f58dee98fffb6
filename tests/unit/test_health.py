"""health.stalled: a run whose training loss stays at its starting value."""
import math

import pytest

from mpisgd.app.health import stalled

CHANCE = math.log(10)


@pytest.mark.parametrize("losses, first, chance, expected", [
    ([2.31, 2.307, 2.306], 2.321, None, True),         # async, momentum 0.9: at chance throughout
    ([2.305] * 20, 2.29, CHANCE, True),
    ([1.2, 0.5, 0.151], 2.281, CHANCE, False),           # the same run with momentum 0: learns
    ([2.2, 2.25, 2.30], 2.30, None, True),              # moved, came back: the last point counts
    ([2.306, 2.306], 2.306, CHANCE, False),              # fewer than 3 log points
    ([2.29, 2.28, 2.28], 2.31, None, False),             # 1.3% down: it moved
    ([2.4, 2.35, 2.303], 2.36, None, False),             # started above chance, collapsed onto it:
    ([2.4, 2.35, 2.303], 2.36, CHANCE, True),            # only the chance clause sees it
    ([2.3, 2.3, float("nan")], 2.3, CHANCE, False),      # a divergence, not a stall
    ([2.3, 2.3, 2.3], float("inf"), None, False),
    ([5.0, 9.0, 14.0], 2.3, CHANCE, False),              # rising: it moved
])
def test_stalled(losses, first, chance, expected):
    assert stalled(losses, first, chance) is expected


def test_points_and_tolerance():
    assert stalled([2.3] * 5, 2.3, points=6) is False
    assert stalled([2.3] * 6, 2.3, points=6) is True
    assert stalled([2.0, 2.0, 2.0], 2.3, tolerance=0.15) is True
    assert stalled([2.0, 2.0, 2.0], 2.3) is False
