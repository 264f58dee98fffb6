"""Every random stream of a run, in one place: numpy PCG64 generators keyed by
``SeedSequence`` lists.

A key names its domain with a salt below, so two uses of one seed never draw
the same numbers, and each stream's k-th draw depends only on its key, never
on timing, rank numbers or how many other draws happened. Changing a salt
changes every run's samples: the salts are part of what makes runs
reproducible across versions.

======================= ===================================== =======================
stream                  key                                   used by
======================= ===================================== =======================
held-out test split     ``[seed, HOLD_OUT]``                  :mod:`mpisgd.data`
synthetic dataset       ``[SYNTHETIC, n]``                    :mod:`mpisgd.data`
i.i.d. shards           ``[seed, SHARD_IID]``                 :func:`mpisgd.data.shard`
label-skew shards       ``[seed, SHARD_SKEW, attempt]``       :func:`mpisgd.data.shard`
a worker's epoch order  ``[seed, EPOCH, worker, epoch]``      :class:`mpisgd.data.WorkerStream`
compute delays          ``[seed, worker, COMPUTE_DELAY]``     :mod:`mpisgd.stragglers`
communication delays    ``[seed, worker, COMM_DELAY]``, or    :mod:`mpisgd.stragglers`
                        ``[seed, COMM_DELAY]`` when shared
Erdos-Renyi graph       ``[seed]``                            :mod:`mpisgd.topology.graphs`
MATCHA round k          ``[seed, k]``                         :mod:`mpisgd.topology.varying`
======================= ===================================== =======================
"""
from __future__ import annotations

import numpy as np

HOLD_OUT = 7919
SYNTHETIC = 2024        # the synthetic dataset is the same in every run: its own fixed seed
SHARD_IID = 1
SHARD_SKEW = 2
EPOCH = 3
COMPUTE_DELAY = 1
COMM_DELAY = 2


def generator(*key: int) -> np.random.Generator:
    """The PCG64 generator of ``SeedSequence(list(key))``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))
