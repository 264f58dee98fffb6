"""One gossip round (neighbour exchange) against an Allreduce of the same buffer; rounds/s.

    mpiexec -n 4 python benchmarks/bench_gossip.py [--sizes 1e4,1e6] [--trials N]
    mpiexec -n 8 python benchmarks/bench_gossip.py
    mpiexec -n 16 python benchmarks/bench_gossip.py

For each float32 buffer of n elements (``--sizes``) and each graph (ring,
torus where P is composite, exponential; Metropolis weights) one round
x_i <- sum_j W[i, j] x_j, timed side by side with the Allreduces
(alternated trial by trial, the order reversed every other trial; medians
of the slowest rank's time per round, ``reps`` rounds per timed call):

* ``neighbor``, ``persistent``: :class:`mpisgd.mixing.Mixer` with that
  exchange, ``mixer.mix(k)`` (MPI_Ineighbor_allgather / persistent
  Send_init, Recv_init per neighbour, then one ``addmv``);
* ``raw nbr``: the bare-MPI limit of the same round: a blocking mpi4py
  ``Neighbor_allgather`` of numpy arrays on a dist-graph communicator of
  the same graph, then the same ``addmv`` on torch views of them (the
  arrays are views of torch-allocated memory, like the Mixer's: numpy's
  own allocator asks for transparent huge pages above 4 MiB, and with
  them this MPICH's exchange of 12-20 MB receive buffers ran 15-30%
  slower, which is the kernel's doing, not the Mixer's);
* ``Comm nbr``: the same round through mpisgd's :class:`~mpisgd.comm.Comm`
  (``comm.ineighbor_allgather`` of torch tensors, ``handle.wait()``, the
  same ``addmv``) with the row of W taken once: what the Mixer costs over
  this is its per-round Python (reading W_k's row each round);
* ``raw AR``: ``comm.Allreduce(MPI.IN_PLACE, buf)`` on a numpy buffer of n
  float32 (the sum; what a round costs when W = 11^T/P);
* ``Comm AR``: mpisgd's ``Comm.allreduce(t, average=True)``, the round of
  ``local`` SGD (pre-division by P, then the Allreduce; an
  ``MPI_Iallreduce`` waited politely when the node is oversubscribed).

Printed per graph: in/out degree, zeta (how much one round shrinks the
disagreement: 0 exact averaging, 1 none), bytes sent per round per rank
(out-degree x 4n) against the Allreduce's 2(P-1)/P x 4n, the medians in
ms, neighbor / raw AR, each Mixer / raw nbr, neighbor / Comm nbr, raw nbr
/ raw AR, and rounds per second of the neighbor Mixer. Before timing, one
round of each neighbour contender is checked against the dense W_i. X on
every rank.

Last, the whole algorithm: steps of ``gossip`` (ring, tau 1, exchange
neighbor, overlap off and on) and of ``local`` tau 1 (one Allreduce of the
mean per step) on a Linear(1000, 1000) (1.0M parameters) with
``torch.optim.SGD``, the gradient set once (no backward: the step is the
optimizer's update plus the round). A timed call is ``--steps`` steps and
``finish()`` (so an overlapped round never runs on across other contenders).

Ranks beyond the cores (4 ranks on a 2-core machine already) share cores:
the Mixer and Comm then wait politely (sched_yield; ``MPISGD_WAIT``) while
the raw mpi4py calls spin in MPICH, and every rank's Python runs on the
same two cores. Absolute times there are scheduling more than bandwidth;
read the ratios.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from mpi4py import MPI

import mpisgd
from mpisgd import topology as topologies
from mpisgd.comm import Comm
from mpisgd.mixing import Mixer
from common import arguments, count, interleaved, machine, parse

GRAPHS = ("ring", "torus", "exponential")
world = MPI.COMM_WORLD
P, rank, is_root = world.size, world.rank, world.rank == 0
torch.set_num_threads(1)

parser = arguments(__doc__)
parser.add_argument("--sizes", default="1e4,1e6",
                    help="buffer lengths (float32 elements), comma-separated (default 1e4,1e6)")
parser.add_argument("--trials", type=count, default=None,
                    help="trials per contender (default 21 up to 4 ranks, 13 up to 8, 7 beyond)")
parser.add_argument("--steps", type=count, default=4,
                    help="algorithm steps per timed call (default 4)")
args = parse(parser)
sizes = [int(float(s)) for s in args.sizes.split(",")]
trials = args.trials or (21 if P <= 4 else 13 if P <= 8 else 7)


def say(*text) -> None:
    if is_root:
        print(*text, flush=True)


class RawRound:
    """The bare-MPI round: blocking Neighbor_allgather of numpy memory, then the same addmv."""

    def __init__(self, W: torch.Tensor, sources: list, dests: list, x0: torch.Tensor):
        self.graph = world.Create_dist_graph_adjacent(sources, dests, reorder=False)
        # torch's allocator, as the Mixer's buffers: numpy madvises huge pages for arrays
        # over 4 MiB, which made this MPICH's exchange 15-30% slower here (not Python's cost)
        self.xt, self.rt = x0.clone(), torch.zeros(max(1, len(sources)), x0.numel())
        self.x, self.recv = self.xt.numpy(), self.rt.numpy()
        self.w, self.wii = W[rank, sources].float(), float(W[rank, rank])

    def mix(self, k: int = 0) -> None:
        self.graph.Neighbor_allgather(self.x, [self.recv, MPI.FLOAT])
        self.xt.addmv_(self.rt.t(), self.w, beta=self.wii)


class CommRound(RawRound):
    """The round through Comm: ineighbor_allgather of torch tensors, a polite wait, the addmv."""

    def __init__(self, comm: Comm, *args):
        super().__init__(*args)
        self.comm = comm

    def mix(self, k: int = 0) -> None:
        self.comm.ineighbor_allgather(self.graph, self.xt, self.rt).wait()
        self.xt.addmv_(self.rt.t(), self.w, beta=self.wii)


def check(name: str, W: torch.Tensor, x0: torch.Tensor, contenders: dict) -> None:
    """One round of each contender gives W_i. X (X gathered from every rank); else raises,
    on every rank."""
    X = np.empty((P, x0.numel()), np.float32)
    world.Allgather(x0.numpy(), X)
    expected = W[rank].float() @ torch.from_numpy(X)
    bad = []
    for label, (mix, out) in contenders.items():
        mix(0)
        if not torch.allclose(out, expected, rtol=1e-5, atol=1e-6):
            error = (out - expected).abs().max().item()
            bad.append(f"rank {rank} {label}: max error {error:.3g}")
    bad = world.allgather(bad)
    if any(bad):
        raise RuntimeError(f"{name}: a round does not give W_i. X: " + "; ".join(sum(bad, [])))


def rounds(n: int) -> None:
    """The round table for buffers of n float32."""
    reps = max(1, min(20, 10**6 // n))          # a timed call lasts well over a scheduler tick
    comm = Comm(world)
    gen = torch.Generator().manual_seed(rank)
    contenders, rows, frees = {}, [], []
    for g in GRAPHS:
        try:
            topo = topologies.build(g, P)
        except ValueError:                     # torus on a prime P
            continue
        W = topo.matrix(0)
        x0 = torch.randn(n, generator=gen)
        xs = {e: x0.clone() for e in ("neighbor", "persistent")}
        mixers = {e: Mixer(comm, topo, xs[e], e) for e in xs}
        graph = (W, mixers["neighbor"].sources, mixers["neighbor"].dests, x0)
        raw, ours = RawRound(*graph), CommRound(comm, *graph)
        check(g, W, x0, {"neighbor": (mixers["neighbor"].mix, xs["neighbor"]),
                         "persistent": (mixers["persistent"].mix, xs["persistent"]),
                         "raw nbr": (raw.mix, raw.xt), "Comm nbr": (ours.mix, ours.xt)})
        for label, mix in (("neighbor", mixers["neighbor"].mix),
                           ("persistent", mixers["persistent"].mix),
                           ("raw", raw.mix), ("comm", ours.mix)):
            contenders[f"{g} {label}"] = lambda mix=mix: [mix(0) for _ in range(reps)]
        rows.append((g, mixers["neighbor"].degree, topo.zeta, mixers["neighbor"].bytes_per_round))
        frees += [m.close for m in mixers.values()] + [raw.graph.Free, ours.graph.Free]
    summed = torch.zeros(n).numpy()            # zeros: repeated sums stay finite
    mean = torch.randn(n, generator=gen)       # the mean stays bounded
    local = Comm(world)
    contenders["raw AR"] = lambda: [world.Allreduce(MPI.IN_PLACE, summed) for _ in range(reps)]
    contenders["Comm AR"] = lambda: [local.allreduce(mean, average=True) for _ in range(reps)]
    t = {k: v / reps for k, v in interleaved(contenders, trials, world).items()}
    for free in frees:                         # communicators are a finite resource
        free()

    ar_bytes = 2 * (P - 1) / P * 4 * n
    say(f"\n## n = {n:g} float32 ({4 * n / 1e6:g} MB), {reps} rounds per timed call; "
        f"raw AR {1e3 * t['raw AR']:.3f} ms, Comm AR {1e3 * t['Comm AR']:.3f} ms "
        f"(Comm/raw {t['Comm AR'] / t['raw AR']:.2f}), AR bytes/rank {ar_bytes / 1e6:.3g} MB")
    say(f"{'graph':>11} {'deg':>5} {'zeta':>5} {'MB/rnd':>7} {'xAR':>5} {'nbr ms':>8} "
        f"{'pers ms':>8} {'raw ms':>8} {'nbr/AR':>7} {'nbr/raw':>7} {'pers/raw':>8} "
        f"{'nbr/Comm':>8} {'raw/AR':>7} {'rounds/s':>9}")
    for g, (indeg, outdeg), zeta, nbytes in rows:
        nb, pe, rw, cm = (t[f"{g} {c}"] for c in ("neighbor", "persistent", "raw", "comm"))
        say(f"{g:>11} {indeg:>2}/{outdeg:<2} {zeta:5.3f} {nbytes / 1e6:7.3g} "
            f"{nbytes / ar_bytes:5.2f} {1e3 * nb:8.3f} {1e3 * pe:8.3f} {1e3 * rw:8.3f} "
            f"{nb / t['raw AR']:7.2f} {nb / rw:7.2f} {pe / rw:8.2f} {nb / cm:8.2f} "
            f"{rw / t['raw AR']:7.2f} {1 / nb:9.1f}")


def algorithms() -> None:
    """gossip (ring, tau 1, overlap off/on) against local tau 1, per step."""
    torch.manual_seed(0)
    base = torch.nn.Linear(1000, 1000)
    grads = [1e-3 * torch.randn_like(p) for p in base.parameters()]
    ring = dict(topology="ring", exchange="neighbor")
    algos = {}
    for label, name, opts in (("gossip ring", "gossip", dict(ring, overlap=False)),
                              ("gossip ring overlap", "gossip", dict(ring, overlap=True)),
                              ("local tau=1", "local", {})):
        model = torch.nn.Linear(1000, 1000)
        model.load_state_dict(base.state_dict())
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")    # local with tau = 1 warns that it is sync SGD
            algos[label] = mpisgd.build(name, model, torch.optim.SGD(model.parameters(), lr=1e-3),
                                        comm=world, tau=1, **opts)

    def run(algo):
        for _ in range(args.steps):
            algo.step()
        algo.finish()

    timed = interleaved({k: lambda a=a: run(a) for k, a in algos.items()}, trials, world)
    t = {k: v / args.steps for k, v in timed.items()}
    for algo in algos.values():
        algo.close()
    params = sum(p.numel() for p in base.parameters())
    say(f"\n## algorithm step ({params / 1e6:.2f}M params, SGD, fixed gradient, tau 1, "
        f"{args.steps} steps per timed call)")
    say(f"{'contender':>20} {'ms/step':>8} {'steps/s':>8} {'/local':>7}")
    for k in algos:
        say(f"{k:>20} {1e3 * t[k]:8.3f} {1 / t[k]:8.1f} {t[k] / t['local tau=1']:7.2f}")


say(f"# gossip round vs Allreduce, {P} ranks, {trials} trials; {machine()}")
for n in sizes:
    rounds(n)
algorithms()
