"""Mixing matrices W for gossip SGD: graphs, weights, files, time-varying graphs, spectra.

Row convention: one gossip round is x_i <- sum_j W[i, j] x_j (row i: whom
node i listens to); a valid W is non-negative, doubly stochastic and
strongly connected (:func:`validate`). The package, one concept per module:

* :mod:`.graphs`: named graphs, Metropolis/uniform weights, :func:`validate`;
* :mod:`.spectral`: spectrum, zeta, W_alpha (EASGD) and J = 11^T/m;
* :mod:`.files`: W from ``.npy``/``.csv`` matrices and edge lists;
* :mod:`.static`: the :class:`Topology` interface and :class:`Static`;
* :mod:`.varying`: one-peer exponential and MATCHA (a W_k per round);
* :mod:`.describe`: the report of ``python -m mpisgd topology``.

:func:`build` makes any of them from a name; docs/topologies.md describes
every graph, rule and file format. Nothing here touches MPI.
"""
from __future__ import annotations

import os

from .describe import describe, describe_easgd
from .files import load
from .graphs import GRAPHS, WEIGHTS, graph, mixing_weights, validate
from .spectral import (averaging_matrix, best_elastic_alpha, elastic_matrix, is_averaging,
                       spectrum, zeta)
from .static import Static, Topology
from .varying import Matcha, OnePeerExponential

TOPOLOGIES = GRAPHS + ("one-peer-exponential",)

__all__ = ["GRAPHS", "WEIGHTS", "TOPOLOGIES", "Topology", "Static", "Matcha", "OnePeerExponential",
           "build", "graph", "mixing_weights", "validate", "load", "spectrum", "zeta",
           "averaging_matrix", "elastic_matrix", "is_averaging", "best_elastic_alpha",
           "describe", "describe_easgd"]


def build(spec: str, n: int, weights: str = "metropolis", p: float | None = None,
          matcha: float | None = None, seed: int = 0, alpha: float | None = None,
          beta: float = 0.9) -> Topology:
    """The topology named by ``spec`` for n nodes, validated.

    spec: a name in GRAPHS (W = ``mixing_weights(graph(spec, n, p, seed), weights)``,
    or ``Matcha(graph, matcha, seed)`` when ``matcha`` is given),
    "one-peer-exponential", "easgd" (W_alpha over n = m workers and one
    centre, n + 1 nodes in all, alpha default beta / m), or a file for
    :func:`load`. A static W is checked with ``validate(W, symmetric=False)``:
    an algorithm that needs symmetry checks it.
    """
    if matcha is not None and spec not in GRAPHS:
        raise ValueError(f"matcha applies to a graph ({', '.join(GRAPHS)}), not to {spec!r}")
    if alpha is not None and spec != "easgd":
        raise ValueError(f"alpha is the EASGD moving rate; {spec!r} takes none")
    if p is not None and spec != "erdos-renyi":
        raise ValueError(f"p is the edge probability of erdos-renyi; {spec!r} takes none")
    if spec in GRAPHS:
        A = graph(spec, n, p, seed)
        if matcha is not None:
            return Matcha(A, matcha, seed, name=f"matcha on {spec}")
        topo = Static(mixing_weights(A, weights), f"{spec}, {weights} weights")
    elif spec == "one-peer-exponential":
        return OnePeerExponential(n)
    elif spec == "easgd":
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"easgd needs a positive number of workers m, got {n}")
        alpha = beta / n if alpha is None else alpha
        topo = Static(elastic_matrix(n, alpha), f"easgd, m = {n} workers + 1 centre, alpha = {alpha:g}")
    elif "/" in spec or "." in spec or os.path.isfile(spec):
        topo = Static(load(spec, n, weights), spec)
        try:
            validate(topo.W, symmetric=False)
        except ValueError as err:
            raise ValueError(f"{spec}: {err}") from None
        return topo
    else:
        raise ValueError(f"unknown topology {spec!r}: known are {', '.join(TOPOLOGIES)}, easgd, "
                         "or a path to a matrix (.npy, .csv) or edge-list file")
    validate(topo.W, symmetric=False)
    return topo
