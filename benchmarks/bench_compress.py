"""A compressed mean of one flat float32 buffer versus the dense Allreduce, end to end.

    mpiexec -n 4 python benchmarks/bench_compress.py [--size 1e7] [--trials N]
        [--formats fp16,bf16,int8,topk:0.01,powersgd:4]

Buffer: ``--size`` float32 values (default 10M, 40 MB), of a random normal
gradient's scale; one torch thread per rank. Contenders, alternated trial by
trial (medians of the slowest rank):

* ``raw``: ``comm.Allreduce(MPI.IN_PLACE, buf)`` on a numpy float32 buffer
  of the same size, the mean's 1/P not included — the limit a dense
  exchange meets;
* ``gloo``: ``torch.distributed.all_reduce`` of the float32 tensor on gloo
  (the peer a DDP user has on CPU);
* ``gloo-fp16``: what DDP's ``fp16_compress_hook`` does on gloo: divide,
  cast to float16, ``all_reduce`` in float16, cast back;
* one per format: :meth:`mpisgd.compress.CompressedMean.run` with error
  feedback, end to end: adding the residual, compressing, the exchange
  (Alltoall and Allgather for the chunked formats, Allgather for top-k,
  Allreduce of the factors for PowerSGD, viewed as 40 x (size/40) matrices,
  40 the number of layers), decoding and the new residual.

Figures: each format's time over ``raw``'s, and its mean codec and exchange
milliseconds per round on rank 0 (:class:`~mpisgd.compress.CompressedMean`'s
counters over three more rounds, each after a barrier) (goal for int8: <= 0.5 at 4
ranks) and over ``gloo``'s; its bytes on the wire over the dense
Allreduce's (mpisgd's count, :class:`~mpisgd.comm.Comm`); ``gloo-fp16``
against ``fp16``.
"""
import torch
from mpi4py import MPI

from mpisgd.comm import Comm
from mpisgd.compress import CompressedMean
from common import arguments, count, init_gloo, interleaved, machine, parse

LAYERS = 40


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--size", type=count, default=10_000_000)
    parser.add_argument("--trials", type=count, default=10)
    parser.add_argument("--formats", default="fp16,bf16,int8,topk:0.01,powersgd:4")
    args = parse(parser)
    torch.set_num_threads(1)
    world = MPI.COMM_WORLD
    P, n = world.size, args.size - args.size % LAYERS
    init_gloo(world)
    import torch.distributed as dist

    g = torch.Generator().manual_seed(world.rank)
    grad = torch.randn(n, generator=g)
    raw = grad.numpy().copy()
    dense = grad.clone()
    half = torch.empty(n, dtype=torch.float16)
    comm = Comm(world)
    width = n // LAYERS
    shapes = [(i * width, (40, width // 40)) for i in range(LAYERS)] if width % 40 == 0 else None
    means, bufs = {}, {}
    for spec in args.formats.split(","):
        bufs[spec] = grad.clone()
        means[spec] = CompressedMean(comm, bufs[spec], spec, shapes)

    def fp16_hook():
        torch.div(dense, P, out=dense)
        half.copy_(dense)
        dist.all_reduce(half)
        dense.copy_(half)

    contenders = {"raw": lambda: world.Allreduce(MPI.IN_PLACE, raw),
                  "gloo": lambda: dist.all_reduce(dense),
                  "gloo-fp16": fp16_hook}
    for spec, cm in means.items():
        contenders[spec] = cm.run
    t = interleaved(contenders, args.trials, world)
    for cm in means.values():               # the split, in the steady state: 3 more rounds
        cm.codec_seconds = cm.exchange_seconds = 0.0
        cm.rounds = 0
        for _ in range(3):
            world.Barrier()
            cm.run()
    if world.rank == 0:
        print(f"# bench_compress: {P} ranks, {n / 1e6:.0f}M float32 ({n * 4 / 1e6:.0f} MB), "
              f"{machine()}")
        print(f"raw Allreduce {t['raw'] * 1e3:.1f} ms, gloo {t['gloo'] * 1e3:.1f} ms "
              f"({t['gloo'] / t['raw']:.2f}x raw), gloo-fp16 {t['gloo-fp16'] * 1e3:.1f} ms "
              f"({t['gloo-fp16'] / t['raw']:.2f}x raw)")
        print(f"{'format':<12} {'ms':>8} {'/ raw':>7} {'/ gloo':>7} {'bytes / dense':>14} "
              f"{'codec ms':>9} {'exchange ms':>12}")
        for spec, cm in means.items():
            print(f"{spec:<12} {t[spec] * 1e3:8.1f} {t[spec] / t['raw']:7.2f} "
                  f"{t[spec] / t['gloo']:7.2f} {cm.bytes / cm.dense_bytes:14.4f} "
                  f"{cm.codec_seconds / cm.rounds * 1e3:9.1f} "
                  f"{cm.exchange_seconds / cm.rounds * 1e3:12.1f}")
        if "fp16" in means:
            print(f"fp16 / gloo-fp16 (DDP's fp16 hook): {t['fp16'] / t['gloo-fp16']:.2f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
