"""Workers that are groups of ranks, against the dense oracle with groups, on 4 ranks.

Every family that takes groups runs as 2 x 2 (two groups of two ranks),
1 x 4 (one group of all ranks) and 4 x 1 (today's algorithm), and every
iterate of every rank is checked against its replica's column of
``reference.cooperative(group=G)``: W over the m groups is written out in
tests/expected_w.py, and the composition with the groups (gradients
averaged in a group, a round mixing the groups' means) in the oracle, not
taken from mpisgd.groups. float64; tolerances as in test_sync.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from mpi4py import MPI

import mpisgd
from mpisgd import reference
import expected_w
from helpers import (ATOL, D, RTOL, classifier, classifier_batch, regression_grad,
                     regression_loss, regression_model, regression_run)

ETA = 0.05
LAYOUTS = [(2, 2), (1, 4), (4, 1)]      # (groups m, ranks per group G) on 4 ranks


def x0():
    return torch.linspace(-1.0, 1.0, D, dtype=torch.float64)


def run(name, steps, **options):
    """``name`` on the regression problem over the world, rank r drawing replica r's
    batches (tests/helpers.py); the algorithm and this rank's parameters after every step."""
    algo, trace = regression_run(name, x0(), steps, MPI.COMM_WORLD, ETA, **options)
    assert algo.replica_index == MPI.COMM_WORLD.rank
    return algo, trace


def check(trace, oracle, steps):
    rank = MPI.COMM_WORLD.rank
    for k in range(steps):
        assert torch.allclose(trace[k], oracle[k][:, rank], rtol=RTOL, atol=ATOL), k


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("m, G", LAYOUTS)
def test_sync_in_two_levels_equals_the_oracle(m, G):
    """sync with groups: reduce-scatter inside, the blocks across, all-gather inside."""
    if MPI.COMM_WORLD.size != 4:
        pytest.skip("the layouts are of 4 ranks")
    steps = 5
    algo, trace = run("sync", steps, group_size=G)
    _, oracle = reference.cooperative(x0(), regression_grad, ETA, expected_w.average(m), steps,
                                      trace=True, group=G)
    check(trace, oracle, steps)
    assert algo.workers == m and algo.replicas == 4
    algo.close()


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("m, G", LAYOUTS)
@pytest.mark.parametrize("options", [
    {"tau": 3},
    {"tau": 4, "group_tau": 2},                                     # hierarchical local SGD
    {"tau": 2, "outer": "nesterov", "outer_lr": 0.7, "outer_momentum": 0.9},   # DiLoCo
], ids=["local", "hierarchical", "diloco"])
def test_local_with_groups_equals_the_oracle(m, G, options):
    if MPI.COMM_WORLD.size != 4:
        pytest.skip("the layouts are of 4 ranks")
    if G == 1 and "group_tau" in options:
        pytest.skip("group_tau needs groups")
    steps = 9                                   # ends between rounds: finish() adds one
    algo, trace = run("local", steps, group_size=G, **options)
    outer = (options["outer"], options["outer_lr"], options["outer_momentum"]) \
        if "outer" in options else None
    _, oracle = reference.cooperative(x0(), regression_grad, ETA, expected_w.average(m), steps,
                                      tau=options["tau"], trace=True, group=G,
                                      group_tau=options.get("group_tau", 1), outer=outer)
    check(trace, oracle, steps)
    algo.finish()
    assert torch.allclose(algo.consensus(), oracle[-1].mean(1) if outer is None else
                          algo.flat.data, rtol=RTOL, atol=ATOL)
    algo.close()


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("m, G", [(2, 2), (1, 4)])
@pytest.mark.parametrize("fragments, tau, delay, alpha, outer", [
    (2, 4, 1, 0.0, None),
    (2, 4, 1, 0.25, ("nesterov", 0.7, 0.9)),
])
def test_streaming_fragments_over_groups_equal_the_oracle(m, G, fragments, tau, delay, alpha,
                                                          outer):
    """Each rank streams the fragments of its block across the groups; the oracle's
    fragment f is the union of every block's fragment f."""
    if MPI.COMM_WORLD.size != 4:
        pytest.skip("the layouts are of 4 ranks")
    steps = 3 * tau + 2
    extra = {"outer": outer[0], "outer_lr": outer[1], "outer_momentum": outer[2]} if outer else {}
    algo, trace = run("local", steps, group_size=G, tau=tau, fragments=fragments,
                      fragment_delay=delay, fragment_alpha=alpha, **extra)
    assert algo.round.stepwise
    _, oracle = reference.streaming(x0(), regression_grad, ETA, 4, steps, tau, fragments, delay,
                                    alpha, outer, trace=True, group=G)
    check(trace, oracle, steps)
    algo.finish()
    algo.close()


@pytest.mark.mpi(min_size=4)
def test_a_compressed_exchange_across_groups_is_exact_when_the_codec_is():
    """top-k with ratio 1 sends everything: local SGD with groups through the compressed
    pseudo-gradient path equals plain local SGD's oracle, every iterate."""
    if MPI.COMM_WORLD.size != 4:
        pytest.skip("the layout is 2 x 2")
    steps, tau = 9, 3
    algo, trace = run("local", steps, group_size=2, tau=tau, compress="topk:1.0")
    assert algo.round.stepwise and algo.round.fragments[0].compressor is not None
    _, oracle = reference.cooperative(x0(), regression_grad, ETA, expected_w.average(2), steps,
                                      tau=tau, trace=True, group=2)
    check(trace, oracle, steps)
    algo.close()


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("m, G", LAYOUTS)
@pytest.mark.parametrize("center", ["replicated", "rank0"])
def test_easgd_with_groups_equals_the_simultaneous_oracle(m, G, center):
    if MPI.COMM_WORLD.size != 4:
        pytest.skip("the layouts are of 4 ranks")
    steps, tau, alpha = 7, 2, 0.3
    algo, trace = run("easgd", steps, group_size=G, tau=tau, alpha=alpha, center=center)
    X, oracle = reference.cooperative(x0(), regression_grad, ETA, expected_w.w_alpha(m, alpha),
                                      steps, tau=tau, v=1, trace=True, simultaneous=True, group=G)
    check(trace, oracle, steps)
    assert torch.allclose(algo.consensus(), X[:, -1], rtol=RTOL, atol=ATOL)   # the centre
    algo.close()


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("m, G", [(2, 2), (4, 1)])
@pytest.mark.parametrize("overlap", [False, True])
def test_gossip_on_a_ring_of_groups_equals_the_oracle(m, G, overlap):
    """D-PSGD among the groups (a ring of 2 groups, or of 4 ranks); with overlap the round
    lands one step later, the oracle's simultaneous order."""
    if MPI.COMM_WORLD.size != 4:
        pytest.skip("the layouts are of 4 ranks")
    steps = 6
    algo, trace = run("gossip", steps, group_size=G, topology="ring", overlap=overlap,
                      exchange="neighbor" if not overlap else "auto")
    W = expected_w.metropolis(m, expected_w.edges("ring", m))
    if overlap:        # round k lands in step k + 1: mixed, then the step's gradient
        _, oracle = reference.cooperative(x0(), regression_grad, ETA, W.T, steps, trace=True,
                                          communicate=lambda k1: k1 > 1, simultaneous=True,
                                          group=G)
    else:
        _, oracle = reference.cooperative(x0(), regression_grad, ETA, W.T, steps, trace=True,
                                          group=G)
    check(trace, oracle, steps)
    algo.finish()
    algo.close()


@pytest.mark.mpi(min_size=4)
def test_cooperative_with_an_auxiliary_variable_over_groups_equals_the_oracle():
    """A(tau, W_alpha, 1) among 2 groups of 2: the auxiliary (the centre) in blocks too."""
    if MPI.COMM_WORLD.size != 4:
        pytest.skip("the layouts are of 4 ranks")
    steps, tau, alpha = 6, 2, 0.25
    algo, trace = run("cooperative", steps, group_size=2, tau=tau, topology="easgd", alpha=alpha)
    X, oracle = reference.cooperative(x0(), regression_grad, ETA, expected_w.w_alpha(2, alpha),
                                      steps, tau=tau, v=1, trace=True, group=2)
    check(trace, oracle, steps)
    assert torch.allclose(algo.consensus(), (X[:, :4].mean(1) * 2 + X[:, 4]) / 3,
                          rtol=RTOL, atol=ATOL)
    algo.close()


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("name", ["ps-sync", "k-sync"])
def test_a_parameter_server_for_one_group_is_sync_sgd_over_its_ranks(name):
    """Rank 0 serves; ranks 1-3 are one worker of 3 ranks whose leader pushes the group's
    mean gradient: the server's SGD step on it is sync SGD over those 3 ranks."""
    comm = MPI.COMM_WORLD
    if comm.size != 4:
        pytest.skip("the layout is 1 server + 1 x 3")
    steps = 5
    model = regression_model(x0())
    opt = torch.optim.SGD(model.parameters(), lr=ETA)
    algo = mpisgd.build(name, model, opt, comm=comm, group_size=3)
    ours = []
    if not algo.is_worker:
        algo.serve()
    else:
        assert algo.workers == 1 and algo.replica_index == comm.rank - 1
        for step in range(steps):
            opt.zero_grad()
            regression_loss(model, algo.replica_index, step).backward()
            algo.step()
            ours.append(algo.flat.data.clone())
        algo.finish()
    final = algo.consensus()
    algo.close()
    workers = comm.Split(0 if comm.rank else MPI.UNDEFINED, comm.rank)
    if workers == MPI.COMM_NULL:
        return
    try:
        sync, theirs = regression_run("sync", x0(), steps, workers, ETA)
        for k in range(steps):
            assert torch.allclose(ours[k], theirs[k], rtol=RTOL, atol=ATOL), k
        assert torch.allclose(final, theirs[-1], rtol=RTOL, atol=ATOL)
        sync.close()
    finally:
        workers.Free()


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("name", ["async-easgd", "eamsgd", "downpour"])
def test_an_asynchronous_centre_with_groups_keeps_each_group_one_model(name):
    """Rank 0 holds the centre and leads group 0 (ranks 0, 1); group 1 is ranks 2, 3: after
    every step both ranks of a group hold the same parameters and counters."""
    comm = MPI.COMM_WORLD
    if comm.size != 4:
        pytest.skip("the layout is 2 x 2")
    model = regression_model(x0())
    opt = torch.optim.SGD(model.parameters(), lr=ETA)
    algo = mpisgd.build(name, model, opt, comm=comm, group_size=2, center="rank0", tau=2)
    assert algo.workers == 2 and algo.worker_index == comm.rank // 2
    for step in range(6):
        opt.zero_grad()
        regression_loss(model, comm.rank, step).backward()
        algo.step()
        algo.rendezvous()         # the centre's messages drained: collectives are safe
        mine = torch.cat([algo.flat.data, torch.tensor([algo.rounds], dtype=torch.float64)])
        everyone = comm.allgather(mine)
        assert torch.equal(everyone[0], everyone[1]) and torch.equal(everyone[2], everyone[3])
    algo.finish()
    algo.close()


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("name, options", [("sync", {}), ("local", {"tau": 3})])
def test_one_group_of_all_ranks_is_sync_sgd_bitwise(name, options):
    """With momentum, on the classifier: one group of 4 is sync SGD to the bit, and group
    size 1 is today's algorithm to the bit."""
    comm = MPI.COMM_WORLD

    def trace(algo_name, **opts):
        model = classifier()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        algo = mpisgd.build(algo_name, model, opt, comm=comm, **opts)
        out = []
        for step in range(6):
            x, y = classifier_batch(comm.rank, step)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            algo.step()
            out.append(algo.flat.data.clone())
        algo.finish()
        algo.close()
        return out

    flat_sync = trace("sync")
    for a, b in zip(flat_sync, trace(name, group_size=comm.size, **options)):
        assert torch.equal(a, b)
    for a, b in zip(trace(name, **options), trace(name, group_size=1, **options)):
        assert torch.equal(a, b)


@pytest.mark.mpi(min_size=4)
def test_hierarchical_local_sgd_equals_torchs_hierarchical_model_averager():
    """local with groups of 2, group_tau 2, tau 4 against torch's HierarchicalModelAverager
    with periods {2: 2 ranks, 4: all 4} on gloo, both on the classifier with plain SGD."""
    comm = MPI.COMM_WORLD
    if comm.size != 4:
        pytest.skip("the layout is 2 x 2")
    import os
    import torch.distributed as dist
    from torch.distributed.algorithms.model_averaging.hierarchical_model_averager import \
        HierarchicalModelAverager
    port = comm.bcast(29500 + os.getpid() % 2000 if comm.rank == 0 else None, root=0)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=comm.rank,
                            world_size=comm.size)
    try:
        steps = 10
        model = classifier()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        averager = HierarchicalModelAverager({2: 2, 4: 4}, warmup_steps=0)
        averager.step = 1    # it averages after its step c with c % period == 0, counting from
        # 0 (its first step averages); local SGD after step s with s % tau == 0, s from 1
        theirs = []
        for step in range(steps):
            x, y = classifier_batch(comm.rank, step)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            averager.average_parameters(model.parameters())
            theirs.append(torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone())
    finally:
        dist.destroy_process_group()
    model = classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    algo = mpisgd.build("local", model, opt, comm=comm, tau=4, group_size=2, group_tau=2)
    for step in range(steps):
        x, y = classifier_batch(comm.rank, step)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        algo.step()
        assert torch.allclose(algo.flat.data, theirs[step], rtol=RTOL, atol=ATOL), step
    algo.close()


@pytest.mark.mpi(min_size=4)
def test_a_checkpoint_with_groups_resumes_bitwise(tmp_path_factory):
    """local with groups and DiLoCo's outer step, hierarchical, streaming int8 fragments
    (one in flight at the stop), and two-level sync: 3 + 5 steps from a state_dict equal
    8 steps, to the bit."""
    comm = MPI.COMM_WORLD
    for name, opts in (("local", {"tau": 3, "group_size": 2, "outer": "nesterov"}),
                       ("local", {"tau": 4, "group_size": 2, "group_tau": 2}),
                       ("local", {"tau": 4, "group_size": 2, "fragments": 2,
                                  "fragment_delay": 1, "compress": "int8"}),
                       ("sync", {"group_size": 2})):
        def make():
            model = classifier()
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            return mpisgd.build(name, model, opt, comm=comm, **opts), model, opt

        def steps(algo, model, opt, first, last):
            for step in range(first, last):
                x, y = classifier_batch(comm.rank, step)
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                algo.step()

        whole = make()
        steps(*whole, 0, 8)
        first = make()
        steps(*first, 0, 3)
        state = copy.deepcopy(first[0].state_dict())    # close() must not change it
        first[0].close()
        second = make()
        second[0].load_state_dict(state)
        steps(*second, 3, 8)
        assert torch.equal(second[0].flat.data, whole[0].flat.data), (name, opts)
        assert second[0].stats()["bytes_sent"] == whole[0].stats()["bytes_sent"]
        whole[0].close()
        second[0].close()


@pytest.mark.mpi(min_size=4)
def test_gradient_accumulation_with_groups_communicates_once_per_step():
    """local with groups: no_sync() holds the group's gradient mean until the last
    backward, as DDP's; the step then equals one on the summed gradient."""
    comm = MPI.COMM_WORLD
    if comm.size != 4:
        pytest.skip("the layout is 2 x 2")
    results = []
    for accumulate in (True, False):
        model = classifier()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        algo = mpisgd.build("local", model, opt, comm=comm, group_size=2, tau=2)
        x, y = classifier_batch(comm.rank, 0, n=6)
        opt.zero_grad()
        if accumulate:
            with algo.no_sync():
                F.cross_entropy(model(x[:3]), y[:3], reduction="sum").backward()
            F.cross_entropy(model(x[3:]), y[3:], reduction="sum").backward()
        else:
            F.cross_entropy(model(x), y, reduction="sum").backward()
        before = algo.stats()["bytes_sent"]
        algo.step()
        results.append((algo.flat.data.clone(), algo.stats()["bytes_sent"] - before))
        algo.close()
    assert torch.allclose(results[0][0], results[1][0], rtol=RTOL, atol=1e-13)
    assert results[0][1] == results[1][1]


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("name, options, message", [
    ("local", {"group_size": 3}, "group_size must divide the 4 ranks of the job into equal "
                                 "groups, got 3"),
    ("local", {"group_size": "two"}, "group_size must be a positive integer or node"),
    ("local", {"group_tau": 2}, "group_tau needs groups"),
    ("local", {"group_size": 2, "schedule": "budget"}, "budget lets each rank"),
    ("sync", {"group_size": 2, "compress": "int8"}, "compress does not combine with groups"),
    ("ps-sync", {"group_size": 2}, "group_size must divide the 3 worker ranks"),
    ("easgd", {"group_size": 2, "group_tau": 2}, "group_tau does not apply"),
    ("gossip", {"group_size": 2, "group_tau": 2, "overlap": True}, "overlap does not combine"),
    ("local", {"group_size": 2, "group_tau": 2, "momentum_policy": "average"},
     "momentum_policy average does not combine"),
    ("local", {"group_size": 2, "group_tau": 2, "fragments": 2}, "fragments does not combine"),
])
def test_bad_groups_are_refused_on_every_rank(name, options, message):
    comm = MPI.COMM_WORLD
    if comm.size != 4:
        pytest.skip("the messages name 4 ranks")
    model = classifier()
    with pytest.raises(ValueError, match=message):
        mpisgd.build(name, model, torch.optim.SGD(model.parameters(), lr=0.1), comm=comm,
                     **options)
