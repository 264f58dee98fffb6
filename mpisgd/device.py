"""Which device each rank trains on: ``--device auto|cpu|cuda[:N]``, one GPU per local rank.

Binding follows Horovod's and torchrun's convention without trusting any one
launcher's environment variables (``MPI_LOCALRANKID``, ``OMPI_COMM_WORLD_LOCAL_RANK``,
``SLURM_LOCALID`` differ between mpiexec, srun and jsrun): the ranks of a
node are found with an ``MPI_COMM_TYPE_SHARED`` split, ordered by world rank,
and local rank ``r`` binds GPU ``r % G``, G being the GPUs torch sees there
(after ``CUDA_VISIBLE_DEVICES``)::

    node with 4 ranks, 4 GPUs:  ranks 0 1 2 3 -> cuda:0 cuda:1 cuda:2 cuda:3
    node with 4 ranks, 1 GPU:   ranks 0 1 2 3 -> cuda:0 (shared, with one warning)

* ``auto`` (the CLI default): CUDA where torch sees a GPU, else the CPU;
* ``cpu``; ``cuda``: the local rank's GPU, an error where none is visible;
* ``cuda:N``: GPU N on every rank (a job script that binds by itself).

Every rank must resolve to the same kind of device (MPI buffers, staging and
kernels follow it): a node without GPUs in a CUDA job is refused on every rank.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import warnings
from dataclasses import dataclass

import torch

from ._mpi import MPI
from .errors import OptionError

_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def parse(spec) -> str:
    """``spec`` (a string or ``torch.device``) as ``auto``, ``cpu``, ``cuda`` or ``cuda:N``;
    ``ValueError`` naming ``device`` otherwise."""
    text = str(spec).strip().lower() if spec is not None else ""
    found = _SPEC.match(text)
    if not found or (found.group(2) is not None and found.group(1) != "cuda"):
        raise OptionError("device", f"must be auto, cpu, cuda or cuda:N, got {spec!r}")
    return text


def check_available(spec: str, gpus: int | None = None) -> None:
    """``ValueError`` naming ``device`` when ``spec`` asks for a GPU this process cannot see.

    ``gpus``: the visible device count (default: torch's). Local: no communication.
    """
    if not spec.startswith("cuda"):
        return
    gpus = torch.cuda.device_count() if gpus is None else gpus
    host = socket.gethostname()
    if gpus == 0:
        why = ("this torch is a CPU build" if torch.version.cuda is None
               else "torch.cuda.is_available() is False: no driver, or CUDA_VISIBLE_DEVICES hides them")
        raise OptionError("device", f"{spec}: no GPU is visible on host {host} ({why}); "
                         "use --device cpu or auto")
    index = int(spec.partition(":")[2] or 0)
    if index >= gpus:
        raise OptionError("device", f"{spec}: host {host} shows only {gpus} GPU(s), cuda:0..cuda:{gpus - 1}")


def choose(spec: str, local_rank: int, gpus: int) -> torch.device:
    """The device of the rank with node-local index ``local_rank`` on a node showing
    ``gpus`` GPUs (pure: tested with stand-in counts)."""
    kind, _, index = spec.partition(":")
    if kind == "cpu" or (kind == "auto" and gpus == 0):
        return torch.device("cpu")
    if index:
        return torch.device("cuda", int(index))
    return torch.device("cuda", local_rank % gpus)


@contextlib.contextmanager
def _node(comm):
    """The ranks of ``comm`` on this node, ordered as in ``comm`` (an ``MPI_COMM_TYPE_SHARED``
    split, freed on exit); collective over ``comm``."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    try:
        yield node
    finally:
        node.Free()


def node_layout(comm) -> tuple[int, int]:
    """(this rank's index among the ranks of its node, how many ranks its node runs);
    collective over ``comm``."""
    with _node(comm) as node:
        return node.Get_rank(), node.Get_size()


def gpu_id(device: torch.device) -> str:
    """The physical GPU behind ``device`` (its UUID; ``cuda:N`` where torch gives none), so
    that ranks that each see one GPU as ``cuda:0`` are told apart. ``""`` for the CPU."""
    if device.type != "cuda":
        return ""
    try:           # never raises: it runs between two collectives of bind()
        uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    except Exception:      # noqa: BLE001 - a CUDA init failure surfaces at set_device
        uuid = None
    return str(uuid) if uuid else str(device)


@dataclass(frozen=True)
class Placement:
    """Where one rank runs: its device, the physical GPU, its node-local index and the
    node's rank count."""
    device: torch.device
    gpu: str
    local_rank: int
    local_size: int
    host: str


def bind(comm, spec: str, gpus: int | None = None) -> Placement:
    """Resolve ``spec`` on every rank of ``comm`` and make the device current; collective.

    Local ranks count the ranks *of* ``comm`` on each node (the CLI's is the
    world; an API user binding on sub-communicators that share a node passes
    ``cuda:N``). ``ValueError`` on every rank when the ranks resolve to
    different kinds of device. Ranks sharing a GPU (more ranks than GPUs on a
    node: how tests run) are allowed, with one warning from the node's first rank.
    """
    gpus = torch.cuda.device_count() if gpus is None else gpus
    host = socket.gethostname()
    with _node(comm) as node:
        local_rank, local_size = node.Get_rank(), node.Get_size()
        device = choose(spec, local_rank, gpus)
        kinds = comm.allgather(device.type)
        if len(set(kinds)) > 1:
            cpu = [r for r, k in enumerate(kinds) if k == "cpu"]
            raise OptionError("device", f"{spec}: ranks {cpu} found no GPU while the others run on "
                              "CUDA; every rank must train on the same kind of device")
        gpu = gpu_id(device)
        peers = node.allgather(gpu) if device.type == "cuda" else []
    if device.type == "cuda":
        torch.cuda.set_device(device)
        shared = sharing(peers, host)
        if shared and local_rank == 0:
            warnings.warn(shared, UserWarning, stacklevel=2)
    return Placement(device, gpu, local_rank, local_size, host)


def sharing(gpus_of_ranks: list[str], host: str) -> str | None:
    """The warning for a node whose ranks (their physical GPUs listed) share a GPU, or ``None``."""
    distinct = len(set(gpus_of_ranks))
    if distinct == len(gpus_of_ranks):
        return None
    return (f"{len(gpus_of_ranks)} ranks share {distinct} GPU{'s' if distinct > 1 else ''} on "
            f"host {host} (local rank r uses cuda:r%GPUs): fine for tests, slower than one "
            "rank per GPU")


def move(model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Put ``model`` and any optimizer state already made on ``device``. The parameters keep
    their identity (so ``optimizer`` still holds them); ``RuntimeError`` if they do not."""
    before = [id(p) for p in model.parameters()]
    model.to(device)
    if [id(p) for p in model.parameters()] != before:
        raise RuntimeError("model.to(device) replaced the parameter objects (torch.__future__."
                           "set_overwrite_module_params_on_conversion?), so the optimizer would "
                           "step stale copies: move the model before building the optimizer "
                           "and pass device=None")
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and value.device != device and value.dim() > 0:
                state[key] = value.to(device)


def describe(placements: list[tuple[str, str, str]]) -> str:
    """The summary line's word on devices, from every rank's (host, device, physical GPU).

    ``cpu``; ``cuda, one GPU per rank (8 ranks, 2 hosts)``; ``cuda, 4 ranks on 1 GPU``.
    """
    if all(d == "cpu" for _, d, _ in placements):
        return "cpu"
    gpus = {(h, g) for h, _, g in placements}
    hosts = {h for h, _, _ in placements}
    where = f"{len(placements)} ranks" + (f", {len(hosts)} hosts" if len(hosts) > 1 else "")
    if len(gpus) == len(placements):
        return f"cuda, one GPU per rank ({where})"
    return f"cuda, {where} on {len(gpus)} GPU{'s' if len(gpus) > 1 else ''}"


def layout(hosts: list[str], network: str = "") -> str:
    """The summary line's word on nodes, from every rank's host and the network's words
    (``mpisgd cluster``'s ``MPISGD_CLUSTER``): ``""`` on one host of no named network,
    ``4 nodes x 2 ranks``, ``7 ranks on 3 nodes`` where nodes run different counts,
    ``1 node x 2 ranks, NIC 1 Gbit/s (emulated)``."""
    counts = {h: hosts.count(h) for h in hosts}
    if len(counts) < 2 and not network:
        return ""
    per = set(counts.values())
    if len(per) == 1:
        r = per.pop()
        words = f"{len(counts)} node{'s' * (len(counts) != 1)} x {r} rank{'s' * (r != 1)}"
    else:
        words = f"{len(hosts)} ranks on {len(counts)} nodes"
    return words + (f", {network}" if network else "")


@contextlib.contextmanager
def deterministic(on: bool = True):
    """``--deterministic``: inside the block, torch's deterministic algorithms (an operation
    without one raises, naming it), cuDNN's deterministic convolutions without autotuning,
    and cuBLAS's fixed workspace (``CUBLAS_WORKSPACE_CONFIG=:4096:8``, unless set; cuBLAS
    reads it when a process first uses it, which for ``mpisgd train`` is inside the run).
    The caller's settings come back afterwards. Does nothing unless ``on``."""
    if not on:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1:3]
        if saved[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
