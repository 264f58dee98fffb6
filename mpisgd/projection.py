"""Projected step time at worker counts one cannot run: compute draws plus alpha-beta collectives.

A step's compute C (forward/backward plus injected delay) is a random
variable: the empirical distribution of a record's per-worker samples
(:class:`Empirical`, ``/steps/compute_sample``) or a parametric one
(:class:`Exponential`). Communication is the alpha-beta model
(:mod:`mpisgd.network`), plus the record's injected ``--comm-delay`` (a
link delay per round, its mean). With n the bytes of one model copy, P
workers, d the mean link delay and c0 the fitted overhead per step (below):

* ``sync``: every step waits for the slowest worker, then one Allreduce:
  ``T = E[max_P C] + AR(n, P) + d + c0``; E[max] of the empirical
  distribution is exact (:meth:`Empirical.order`);
* ``local`` (and replicated ``easgd``, ``cooperative`` with the complete graph):
  a round is tau steps then an Allreduce: ``T = (E[max_P (C_1 + ... + C_tau)] +
  AR(n, P) + d) / tau + c0`` (Monte Carlo sums; exact for tau = 1);
* ``gossip`` (and ``cooperative``): lock-step with the neighbours, the max-plus
  recurrence ``t_i(r+1) = max_{j in N[i]} t_j(r) + C_i(r) + NB(n, deg) + d``
  over the graph of P nodes, simulated for 200 rounds (exact in distribution;
  the slowest neighbourhood sets the pace, not the slowest worker);
* the parameter-server family and the asynchronous centre: a discrete-event
  simulation (:func:`simulate_server`) of P workers drawing C and a server
  (S servers: each holds 1/S of the bytes, in parallel) that receives and
  sends messages one at a time, ``alpha + (n / S) beta`` each, by the
  protocol's rules (K-sync cancels and restarts everyone; K-async keeps the
  slower workers going; async answers each push at once). With exponential
  C and a free network it reproduces the closed forms of REFERENCES.md:
  K-sync ``E[X_(K:P)] = mu (H_P - H_{P-K})`` per update.

Workers that are groups of G ranks (``group_size``; R ranks per node), the
lock-step families: every step each group's gradient mean inside the node
(an Allreduce of n over G ranks, on the ``intra`` level of a calibration
with two), and a round across the m groups on 1/G blocks, every rank of a
node on the fabric at once (``inter`` level, its bandwidth shared by R):

* ``sync``: ``T = E[max_{mG} C] + RS_intra(n, G) + AR_inter(n/G, m; R) + AG_intra(n, G)
  + d + c0``;
* ``local`` (``easgd``, ...): ``T = (E[max_m sum_tau max_G C] + tau AR_intra(n, G)
  + AR_inter(n/G, m; R) + AG_intra(n, G) + d) / tau + c0``;
* hierarchical local SGD (``group_tau`` T1 > 1): the ranks of a group meet only
  when they average parameters, every T1 steps and before each round, so
  ``T = (E[max_m sum_segments max_G sum_segment C] + a AR_intra(n, G) +
  AR_inter(n/G, m; R) + AG_intra(n, G) + d) / tau + c0``, the segments of T1
  steps between meetings (exact when T1 divides tau) and a the averagings
  per round (tau / T1 when it divides).

c0 is what the model leaves out on the machine the records came from
(Python around each step, wake-ups): :func:`fit_overhead` takes it as the
mean of measured minus modelled step time over the records given, at their
own worker counts, and :func:`project` adds it at every P. For the server
families it fits instead the server's cost per message, o (LogGP's
overhead), which an update pays once per message it needs. The projection
reports its own error where it can: fit on the records with the fewer
workers, predict the largest (``mpisgd project`` prints it).
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np

from . import streams
from .network import Network



def traits(algo: str, options: dict | None = None):
    """What algorithm ``algo`` declares of itself (:mod:`mpisgd.algorithms.traits`); the
    model follows from it, never from the name."""
    from .algorithms import ALGORITHMS
    cls = ALGORITHMS.get(algo)
    return cls.traits(options or {}) if cls is not None else None


class Exponential:
    """C ~ Exp(mean): order statistics in closed form."""

    def __init__(self, mean: float):
        self.m = float(mean)

    @property
    def mean(self) -> float:
        return self.m

    def order(self, k: int, p: int) -> float:
        """E[X_(k:p)] = mean (H_p - H_{p-k})."""
        return self.m * sum(1.0 / i for i in range(p - k + 1, p + 1))

    def draw(self, rng: np.random.Generator, shape) -> np.ndarray:
        return rng.exponential(self.m, shape)


class Empirical:
    """C distributed as a sample (seconds): draws with replacement; exact order statistics."""

    def __init__(self, sample):
        x = np.sort(np.asarray(sample, dtype=float).ravel())
        x = x[np.isfinite(x)]
        if not len(x):
            raise ValueError("no compute times to project from")
        self.x = x

    @property
    def mean(self) -> float:
        return float(self.x.mean())

    def order(self, k: int, p: int) -> float:
        """E[X_(k:p)] of p draws: sum_i x_(i) (G(i/m) - G((i-1)/m)), G(u) = P(Bin(p, u) >= k)."""
        m = len(self.x)
        u = np.arange(m + 1) / m
        return float(np.dot(self.x, np.diff(_binomial_tail(u, p, k))))

    def draw(self, rng: np.random.Generator, shape) -> np.ndarray:
        return rng.choice(self.x, size=shape)


def _binomial_tail(u: np.ndarray, p: int, k: int) -> np.ndarray:
    """P(Bin(p, u) >= k) for each u, in log space (p up to millions)."""
    j = np.arange(k, p + 1)
    logc = np.array([math.lgamma(p + 1) - math.lgamma(i + 1) - math.lgamma(p - i + 1) for i in j])
    out = np.zeros_like(u)
    inner = (u > 0) & (u < 1)
    lu, l1u = np.log(u[inner])[:, None], np.log1p(-u[inner])[:, None]
    out[inner] = np.exp(logc[None, :] + j[None, :] * lu + (p - j)[None, :] * l1u).sum(1)
    out[u >= 1] = 1.0
    return np.clip(out, 0.0, 1.0)


@dataclass
class Workload:
    """What a run does per step, read off its record (or given)."""
    algo: str
    workers: int
    nbytes: float                          #: one model copy, bytes
    compute: object                        #: Empirical or Exponential
    options: dict = field(default_factory=dict)
    link_delay: float = 0.0                #: mean injected delay per round (--comm-delay)
    batch: int = 32
    train_samples: int | None = None
    group: int = 1                         #: ranks per worker (groups)
    ranks_per_node: int = 1                #: ranks sharing a node's link
    measured: float | None = None          #: measured seconds per worker step
    path: str = ""

    @property
    def tau(self) -> int:
        return int(self.options.get("tau") or 1)

    @property
    def servers(self) -> int:
        return int(self.options.get("servers") or 1)


def _mean_delay(spec) -> float:
    if not spec:
        return 0.0
    text = str(spec)
    return float(text[4:]) if text.startswith("exp:") else float(text)


def workload(rec: dict) -> Workload:
    """A :class:`Workload` from a record (:func:`mpisgd.app.record.read`)."""
    cfg = rec["config"]
    opts = cfg.get("options", {})
    sample = rec.get("steps", {}).get("compute_sample")
    if sample is None:
        raise ValueError(f"{rec['path']}: no /steps/compute_sample (a record of mpisgd < 0.15); "
                         "rerun it")
    m = rec["metrics"]
    measured = None
    if len(m.get("step", [])) >= 2 and m["step"][-1] > m["step"][0]:
        measured = float((m["wall_time"][-1] - m["wall_time"][0]) / (m["step"][-1] - m["step"][0]))
    samples = rec["attrs"].get("train_samples")
    workers = int(rec["attrs"]["workers"])
    hosts = list(rec.get("ranks", {}).get("host", []))
    per_node = max((hosts.count(h) for h in set(hosts)), default=1)
    group = int(rec["attrs"].get("world_size", workers)) // workers if algo_groups(opts) else 1
    return Workload(cfg["algo"], workers, 4.0 * len(rec["final"]["params"]),
                    Empirical(sample), opts, _mean_delay(opts.get("comm_delay")),
                    int(cfg.get("batch_size", 32)), int(samples) if samples is not None else None,
                    measured=measured, path=rec["path"], group=group, ranks_per_node=per_node)


def algo_groups(options: dict) -> bool:
    """Whether a run's options made its workers groups of ranks."""
    return options.get("group_size") not in (None, 1, "1")


def model_step(w: Workload, p: int, net: Network, rng_seed: int = 0, message: float = 0.0) -> dict:
    """The modelled seconds per worker step at p workers, and its parts; ``message``: the
    server's own cost per message (LogGP's o), added to each one's alpha + n beta."""
    rng = streams.generator(streams.PROJECTION, rng_seed)
    n, algo = w.nbytes, w.algo
    kind = traits(algo, w.options)
    if kind is None:
        raise ValueError(f"project: no model for --algo {algo}"
                         + (f" with center {w.options['center']}" if "center" in w.options else ""))
    if w.group > 1:
        return _two_levels(w, p, net, rng, kind)
    if kind.family == "lockstep":
        tau = w.tau if kind.periodic else 1
        comm = net.allreduce_time(n, p) + w.link_delay
        if tau == 1:
            compute = w.compute.order(p, p)
        else:
            trials = max(200, 400_000 // (p * tau))
            compute = float(w.compute.draw(rng, (trials, p, tau)).sum(2).max(1).mean())
        step = (compute + comm) / tau
        return {"step": step, "compute": compute / tau, "comm": comm / tau,   # compute: waits incl.
                "bytes": 2 * (p - 1) / p * n / tau}
    if kind.family == "gossip":
        from .topology import build
        topo = build(w.options.get("topology") or "ring", p, w.options.get("weights") or "metropolis")
        support = topo.support().numpy() if hasattr(topo.support(), "numpy") else np.asarray(topo.support())
        adj = support != 0
        np.fill_diagonal(adj, True)
        degree = int(adj.sum(1).max()) - 1
        comm = net.neighbours(n, degree) + w.link_delay
        tau, rounds = w.tau, 200
        t = np.zeros(p)
        index = [np.flatnonzero(row) for row in adj]
        for _ in range(rounds):
            c = w.compute.draw(rng, (p, tau)).sum(1)
            t = np.array([t[ix].max() for ix in index]) + c + comm
        step = float(t.mean()) / (rounds * tau)
        return {"step": step, "compute": w.compute.mean, "comm": comm / tau,
                "bytes": degree * n / tau}
    s = w.servers                     # the server family
    k = w.options.get("k")            # the algorithm's own default: all workers or 1 (k_all)
    k = int(k) if k is not None else (p if kind.k_all else 1)
    tau = w.tau if kind.periodic else 1
    service = net.p2p(n / s) + message
    out = simulate_server(w.compute, p, min(k, p), algo, service, service, tau=tau,
                          link_delay=w.link_delay, rng=rng)
    comm = 2 * service + w.link_delay       # one push and its reply, per computation
    return {"step": out["step"] / tau, "compute": w.compute.mean, "comm": comm / tau,
            "bytes": 2 * n / tau, "update": out["update"]}


def _two_levels(w: Workload, m: int, net: Network, rng, kind) -> dict:
    """The lock-step families with workers in groups (the module's two-level model)."""
    if kind.family != "lockstep":
        raise ValueError(f"no two-level model for --algo {w.algo} (a {kind.family} family; "
                         "the lock-step ones have it)")
    n, G = w.nbytes, w.group
    intra, inter = net.level("intra"), net.level("inter")
    across = 2 * inter.ring(n / G, m, sharing=max(w.ranks_per_node, 1)) if m > 1 else 0.0
    gather = intra.ring(n, G)
    if not kind.periodic:              # sync: the gradient mean in two levels, every step
        comm = intra.ring(n, G) + across + gather + w.link_delay
        compute = w.compute.order(m * G, m * G)
        return {"step": compute + comm, "compute": compute, "comm": comm,
                "bytes": (G - 1) / G * n + 2 * (m - 1) / m * n / G + (G - 1) / G * n}
    tau, every = w.tau, int(w.options.get("group_tau") or 1)
    inside = 2 * intra.ring(n, G)   # an Allreduce in the group: of gradients or parameters
    trials = max(200, 400_000 // (m * G * tau))
    draws = w.compute.draw(rng, (trials, m, tau, G))
    if every == 1:                  # the group's gradient mean every step
        averages = tau
        compute = float(draws.max(3).sum(2).max(1).mean())
    else:                           # hierarchical: the group meets every `every` steps
        averages = _inside_averages(tau, every)
        cuts = list(range(0, tau, every)) + [tau]
        segments = np.add.reduceat(draws, cuts[:-1], axis=2)        # (trials, m, segments, G)
        compute = float(segments.max(3).sum(2).max(1).mean())
    comm = averages * inside + across + gather + w.link_delay
    return {"step": (compute + comm) / tau, "compute": compute / tau, "comm": comm / tau,
            "bytes": (averages * 2 * (G - 1) / G * n + 2 * (m - 1) / m * n / G
                      + (G - 1) / G * n) / tau}


def _inside_averages(tau: int, every: int) -> float:
    """Parameter averagings inside a group per round of hierarchical local SGD: one every
    ``every`` steps, and one before each round that does not fall on such a step (the
    mean over lcm(tau, every) steps, where the pattern repeats)."""
    span = math.lcm(tau, every)
    rounds = span // tau
    return (span // every + sum(1 for r in range(1, rounds + 1) if r * tau % every)) / rounds


def simulate_server(dist, p: int, k: int, algo: str, service_in: float, service_out: float,
                    tau: int = 1, link_delay: float = 0.0, updates: int = 2000, rng=None) -> dict:
    """Seconds per update and per worker step (a computation, cancelled ones included) of
    one server and p workers.

    K-sync and ps-sync in closed form: every update cancels and restarts all
    workers with fresh draws, so an update takes ``E[X_(K:P)] + d + K s_in +
    P s_out`` (the K pushes received, the new w sent to all P, one at a time).
    The others by discrete-event simulation of ``updates`` updates: a worker's
    push reaches the server ``C + d`` after it started, the server takes them in
    arrival order, ``s_in`` each; K-async sends the new w to the K workers that
    pushed (the rest go on), async and K-batch-async answer each push at once
    (``s_out``), K-batch-sync lets a pusher go on at the same version and restarts
    everyone at an update.
    """
    cancel, distinct, waits = traits(algo).server_rules
    k = p if algo == "ps-sync" else k
    if cancel and distinct:
        t = dist.order(k, p) + link_delay + k * service_in + p * service_out
        return {"update": t, "step": t, "updates": None}
    rng = rng or streams.generator(streams.PROJECTION, 0)

    def work() -> float:
        return float(dist.draw(rng, tau).sum())

    version, batch, done, busy, t_update = 0, 0, 0, 0.0, 0.0
    started, generation = [1] * p, [0] * p
    events = [(work() + link_delay, i, 0, 0) for i in range(p)]
    heapq.heapify(events)
    counted, waiting = set(), set()

    def restart(j: int, at: float) -> None:
        generation[j] += 1
        started[j] += 1
        heapq.heappush(events, (at + work() + link_delay, j, version, generation[j]))

    while done < updates and events:
        t, i, v, gen = heapq.heappop(events)
        if gen != generation[i]:
            continue                            # cancelled by an update
        busy = max(busy, t) + service_in
        counted.add(i if distinct else (i, batch))
        batch += 1
        if len(counted) >= k:                   # an update
            done, t_update, version = done + 1, busy, version + 1
            receivers = range(p) if cancel else sorted(waiting | {i})
            for m, j in enumerate(receivers):
                restart(j, busy + (m + 1) * service_out)
            busy += len(receivers) * service_out
            counted, waiting = set(), set()
        elif waits:                             # K-async: waits for the update
            waiting.add(i)
        elif cancel:                            # K-batch-sync: goes on at this version
            restart(i, t)
        else:                                   # answered at once
            busy += service_out
            restart(i, busy)
    steps = sum(started) / p
    return {"update": t_update / max(done, 1), "step": t_update / max(steps, 1), "updates": done}


@dataclass
class Overhead:
    """What the model leaves out, fitted on records: seconds per step (``step``, c0: the
    lock-step families) and per server message (``message``, o: the server families)."""
    step: float = 0.0
    message: float = 0.0


def fit_overhead(loads: list[Workload], net: Network) -> Overhead:
    """The overhead that makes the model meet the records at their own worker counts.

    Lock-step and gossip: c0 = mean(measured - modelled) per step (>= 0). The
    server families: the per-message cost o (>= 0) that the server pays on each
    message it takes or sends, solved by bisection per record and averaged:
    unlike a per-step constant it grows with the messages an update needs
    (K in, P out for K-sync), which is how a busy server slows with P.
    """
    measured = [w for w in loads if w.measured]
    if not measured:
        return Overhead()
    kind = traits(measured[0].algo, measured[0].options)
    if kind is None or kind.family != "server":
        gaps = [w.measured - model_step(w, w.workers, net)["step"] for w in measured]
        return Overhead(step=max(0.0, float(np.mean(gaps))))
    costs = []
    for w in measured:
        lo, hi = 0.0, max(w.measured, 1e-6)
        if model_step(w, w.workers, net, message=0.0)["step"] >= w.measured:
            costs.append(0.0)
            continue
        for _ in range(30):
            mid = (lo + hi) / 2
            if model_step(w, w.workers, net, message=mid)["step"] < w.measured:
                lo = mid
            else:
                hi = mid
        costs.append((lo + hi) / 2)
    return Overhead(message=float(np.mean(costs)))


def project(w: Workload, workers: list[int], net: Network,
            overhead: Overhead | None = None) -> list[dict]:
    """Rows per worker count: step time, compute utilisation, bytes per step, time per epoch.

    ``overhead``: the fitted :class:`Overhead` (none by default), added at every count."""
    overhead = overhead or Overhead()
    rows = []
    for p in workers:
        m = model_step(w, p, net, message=overhead.message)
        step = m["step"] + overhead.step
        row = {"workers": p, "step": step, "compute": m["compute"], "comm": m["comm"],
               "utilisation": min(1.0, w.compute.mean / step) if step > 0 else 1.0,
               "bytes": m["bytes"], "limit": w.compute.mean,
               "epoch": (w.train_samples / (p * w.batch) * step) if w.train_samples else None}
        if "update" in m:
            row["update"] = m["update"] + overhead.step
        rows.append(row)
    return rows
