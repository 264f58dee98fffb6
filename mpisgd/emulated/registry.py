"""Which emulated clusters exist, who owns each, and removing those nobody owns.

Each cluster has a directory ``/run/mpisgd/clusters/NAME`` written before its first namespace and removed after its last: ``owner.json``
(the owning process and its start time, or ``"up"`` for a cluster kept up between
jobs, and the cluster's shape), the launcher's shim and host file. A cluster whose
owner has died (a SIGKILL, a crashed node of the batch system) is stale: the next
``mpisgd cluster`` removes it before it starts, so a killed job never blocks the
next one. ``/run`` is emptied at boot, as the namespaces are.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil

from ..errors import ConfigError
from . import hosts

ROOT = "/run/mpisgd/clusters"


def root() -> str:
    return ROOT


def directory(name: str) -> str:
    return os.path.join(root(), hosts.check_name(name))


def _started(pid: int) -> str | None:
    """The start time of process ``pid`` (field 22 of /proc/PID/stat), ``None`` if gone:
    with the pid it names one process, whatever reuses the pid later."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@contextlib.contextmanager
def locked():
    """The registry's lock, held while clusters are created or removed."""
    os.makedirs(root(), exist_ok=True)
    fd = os.open(os.path.join(root(), ".lock"), os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def claim(c: hosts.Cluster, keep: bool = False, mine: bool = False) -> str:
    """Register cluster ``c`` as this process's (``keep``: as kept up, owned by no process;
    ``mine``: it is this process's already); its directory. ``ConfigError`` when a live
    cluster has the name. Call under :func:`locked`."""
    path = directory(c.name)
    owner = read(c.name)
    if owner is not None and alive(owner) and not mine:
        who = "kept up (mpisgd cluster down --name NAME removes it)" if owner["pid"] is None \
            else f"owned by pid {owner['pid']}"
        raise ConfigError(f"cluster {c.name} exists, {who}; give another --name")
    os.makedirs(path, exist_ok=True)
    body = {"pid": None if keep else os.getpid(), "started": None if keep else _started(os.getpid()),
            "nodes": c.nodes, "ranks_per_node": c.ranks_per_node, "nic": c.nic,
            "latency": c.latency}
    with open(os.path.join(path, "owner.json.tmp"), "w", encoding="utf-8") as f:
        json.dump(body, f)
    os.replace(os.path.join(path, "owner.json.tmp"), os.path.join(path, "owner.json"))
    return path


def read(name: str) -> dict | None:
    try:
        with open(os.path.join(directory(name), "owner.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def alive(owner: dict) -> bool:
    """Whether the cluster is still owned: kept up, or its process still running."""
    return owner["pid"] is None or _started(owner["pid"]) == owner["started"]


def cluster(name: str) -> hosts.Cluster | None:
    """The shape of registered cluster ``name``, or ``None``."""
    owner = read(name)
    if owner is None:
        return None
    return hosts.Cluster(name, owner["nodes"], owner["ranks_per_node"], owner["nic"],
                         owner["latency"])


def names() -> list[str]:
    """Every cluster registered or with namespaces left."""
    found = {n for n in os.listdir(root()) if hosts.valid_name(n)} if os.path.isdir(root()) \
        else set()
    for ns in hosts.namespaces():
        found.add(ns[len(hosts.PREFIX):].rsplit("-", 1)[0])
    return sorted(found)


def remove(name: str) -> list[str]:
    """Remove cluster ``name``: its processes, namespaces and directory."""
    spaces = hosts.down(name)
    shutil.rmtree(directory(name), ignore_errors=True)
    return spaces


def reap() -> list[str]:
    """Remove every cluster whose owner is gone (namespaces without a registration
    included); the names removed. Call under :func:`locked`."""
    gone = []
    for name in names():
        owner = read(name)
        if owner is None or not alive(owner):
            remove(name)
            gone.append(name)
    return gone
