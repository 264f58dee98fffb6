"""No two random streams of a run draw the same numbers (mpisgd/streams.py).

Runs every family through the real driver with options that reach every
stream a run has (label-skew and i.i.d. shards, synthetic and held-out data,
compute and communication delays, per worker and shared, Erdos-Renyi and
MATCHA graphs, PowerSGD), records the key of every stream made on every rank,
and checks that equal streams (equal ``SeedSequence`` states: keys padded with
zeros included) are one stream: one key, one domain, one caller.
"""
import collections
import os

import numpy as np
import pytest
from mpi4py import MPI

from mpisgd import ALGORITHMS, streams
from mpisgd.app import train
from mpisgd.app.config import from_sources

DELAYS = dict(straggler="exp:0.0001", comm_delay="exp:0.0001")
RUNS = {
    "sync": dict(compress="powersgd:1", shard="label-skew", **DELAYS),
    "local": dict(tau=2, data="synthetic:256", **DELAYS),
    "easgd": dict(tau=2, **DELAYS),
    "gossip": dict(topology="ring", matcha=0.5, **DELAYS),
    "cooperative": dict(topology="erdos-renyi", tau=2, **DELAYS),
    "async-easgd": dict(tau=2, **DELAYS), "eamsgd": dict(tau=2, **DELAYS),
    "downpour": dict(tau=2, **DELAYS), "ps-sync": dict(**DELAYS), "async": dict(**DELAYS),
    "k-sync": dict(k=1, **DELAYS), "k-async": dict(k=1, **DELAYS),
    "k-batch-sync": dict(k=2, **DELAYS), "k-batch-async": dict(k=2, **DELAYS),
}


def test_every_family_is_here():
    assert set(RUNS) == set(ALGORITHMS)


@pytest.mark.mpi(min_size=3)
def test_no_two_streams_of_any_run_draw_the_same_numbers(shared_dir):
    comm = MPI.COMM_WORLD
    tmp = shared_dir
    made = []
    for algo, flags in RUNS.items():
        cfg = from_sources(None, dict(algo=algo, steps=4, log_every=4, batch_size=8, threads=1,
                                      seed=3, out=os.path.join(tmp, f"{algo}.h5"), **flags))
        with streams.recording() as seen:
            train.run(cfg, comm, quiet=True)
        made += [(algo, *entry) for entry in seen]
    everything = comm.gather(made, root=0)
    if comm.rank:
        return
    by_state = collections.defaultdict(set)
    for algo, caller, domain, key in (e for rank in everything for e in rank):
        state = tuple(np.random.SeedSequence(list(key)).generate_state(4))
        by_state[state].add((caller, domain, key))
    shared = {s: users for s, users in by_state.items() if len(users) > 1}
    assert not shared, f"streams drawing the same numbers: {list(shared.values())}"
    domains = {domain for users in by_state.values() for _, domain, _ in users}
    assert domains == set(streams.DOMAINS) - {streams.PROJECTION}, "a stream no run reached"
