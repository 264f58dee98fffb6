"""Every random stream of a run, in one place: numpy PCG64 generators keyed by
``SeedSequence`` lists that start with their domain.

A key is ``[DOMAIN, part, ...]``: the domain's number below, then a fixed
number of parts (the arity, checked at every call). Two streams of different
domains differ in their first entry, so they never draw the same numbers;
two of one domain differ in a part (worker, epoch, round). The arity is
fixed because ``SeedSequence`` pads short keys with zeros: ``[a, b]`` and
``[a, b, 0]`` are the same stream. Each stream's k-th draw depends only on its
key, never on timing, rank numbers or how many other draws happened.

================== ==== ================================== ==================================
domain             no.  key after the domain               used by
================== ==== ================================== ==================================
``HOLD_OUT``       1    seed                               held-out test split (:mod:`.data`)
``SYNTHETIC``      2    n (the same data in every run)     synthetic dataset (:mod:`.data`)
``SHARD_IID``      3    seed                               i.i.d. shards (:func:`.data.shard`)
``SHARD_SKEW``     4    seed, attempt                      label-skew shards (Dirichlet)
``EPOCH``          5    seed, worker, epoch                a worker's data order
``INIT``           6    seed                               the model's initial parameters
                                                           (torch's generator, :func:`torch_seed`)
``COMPUTE_DELAY``  7    seed, worker                       ``--straggler`` (:mod:`.stragglers`)
``COMM_DELAY``     8    seed, worker                       ``--comm-delay``, per worker
``COMM_SHARED``    9    seed                               ``--comm-delay`` of collective
                                                           rounds (every rank alike)
``ERDOS_RENYI``    10   seed                               random graphs (:mod:`.topology`)
``MATCHA``         11   seed, round                        MATCHA's active matchings
``POWERSGD``       12   (none: every rank alike)           PowerSGD's first Q (:mod:`.compress`)
``STEP_SAMPLE``    13   worker                             the record's step-time sample
                                                           (:mod:`.steptimes`)
``PROJECTION``     14   seed                               ``mpisgd project``'s simulations
``EVAL_SUBSET``    15   seed                               the test samples a log point
                                                           evaluates (``--eval-samples``)
================== ==== ================================== ==================================

Version 2 of these keys (mpisgd 0.2; :data:`VERSION`, in every record's and
checkpoint's ``streams`` entry): version 1 keyed ``[seed, salt]`` with small
salts, and the i.i.d. shards drew what MATCHA's round 1 drew, label-skew's
attempt 1 what worker 2's compute delays drew. Changing a key changes every
run's samples.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager

import numpy as np

VERSION = 2

#: domain -> (number, parts after it)
DOMAINS = {
    "HOLD_OUT": (1, 1), "SYNTHETIC": (2, 1), "SHARD_IID": (3, 1), "SHARD_SKEW": (4, 2),
    "EPOCH": (5, 3), "INIT": (6, 1), "COMPUTE_DELAY": (7, 2), "COMM_DELAY": (8, 2),
    "COMM_SHARED": (9, 1), "ERDOS_RENYI": (10, 1), "MATCHA": (11, 2), "POWERSGD": (12, 0),
    "STEP_SAMPLE": (13, 1), "PROJECTION": (14, 1), "EVAL_SUBSET": (15, 1),
}
HOLD_OUT, SYNTHETIC, SHARD_IID, SHARD_SKEW, EPOCH, INIT, COMPUTE_DELAY, COMM_DELAY, \
    COMM_SHARED, ERDOS_RENYI, MATCHA, POWERSGD, STEP_SAMPLE, PROJECTION, EVAL_SUBSET = DOMAINS

_recorded: list | None = None     # (caller, key) while recording()


def key(domain: str, *parts: int) -> list[int]:
    """``[number of domain, *parts]``; ``ValueError`` for a wrong number of parts."""
    number, arity = DOMAINS[domain]
    if len(parts) != arity:
        raise ValueError(f"stream {domain} takes {arity} parts after its domain, got {parts}")
    return [number, *(int(p) for p in parts)]


def generator(domain: str, *parts: int) -> np.random.Generator:
    """The PCG64 generator of ``SeedSequence(key(domain, *parts))``."""
    return np.random.Generator(np.random.PCG64(_sequence(domain, parts)))


def torch_seed(domain: str, *parts: int) -> int:
    """A 63-bit seed for a torch generator (``torch.manual_seed``), drawn from the key."""
    return int(_sequence(domain, parts).generate_state(1, np.uint64)[0]) >> 1


def _sequence(domain: str, parts: tuple) -> np.random.SeedSequence:
    out = key(domain, *parts)
    if _recorded is not None:
        caller = sys._getframe(2)
        _recorded.append((f"{caller.f_globals.get('__name__')}.{caller.f_code.co_name}", domain,
                          tuple(out)))
    return np.random.SeedSequence(out)


@contextmanager
def recording():
    """Collect ``(caller, domain, key)`` of every stream made inside the block (tests: no two
    callers share a key)."""
    global _recorded
    previous, _recorded = _recorded, []
    try:
        yield _recorded
    finally:
        _recorded = previous
