"""Starting an MPI job on emulated hosts with the MPI's own launcher.

Both launchers start one daemon per host with a remote shell ("ssh HOST CMD");
here the remote shell is a shim (:func:`write_shim`) that runs CMD inside the
host's namespace, with the host's name as its hostname (its own UTS namespace),
on the node's cores, through a shell as sshd would (the words joined, then read
by ``sh``: hydra quotes its proxy's path, Open MPI sends ``VAR=...;export VAR;...``
lists and ``( ... )`` groups)::

    SHIM [-x ...] 10.99.0.2 CMD...
      -> taskset -c CPUS ip netns exec mpisgd-NAME-n1 unshare --uts
             sh -c 'hostname mpisgd-NAME-n1; CMD...'

The launcher itself runs in the switch's namespace (it reaches every node over
the bridge), and every process inherits the caller's environment, as on a
cluster whose nodes share one file system:

* MPICH (hydra): ``mpiexec -launcher ssh -launcher-exec SHIM -f HOSTFILE
  -iface br0 -n N CMD``; the host file lists ``IP:R`` per node; MPICH's
  libfabric netmod with its TCP provider on the node's NIC
  (``MPIR_CVAR_CH4_NETMOD=ofi``, ``FI_PROVIDER=tcp``, ``FI_TCP_IFACE=eth0``) between
  nodes, its shared memory inside one. Not UCX: UCX finds the emulated nodes
  on one machine and moves their messages through memory (process_vm_readv),
  around the shaped NICs (a 16 MB message between nodes in 4 ms instead of the
  134 ms of 1 Gbit/s); ``UCX_TLS=tcp,self`` keeps any UCX that runs on TCP;
* Open MPI: ``mpirun --hostfile HOSTFILE (IP slots=R) --map-by ppr:R:node
  --prtemca plm_ssh_agent SHIM`` (PRRTE, Open MPI 5, run with the 5.0.11 wheel;
  ``--mca plm_rsh_agent`` before), its ob1
  messaging (``OMPI_MCA_pml=ob1``, not UCX) over TCP between nodes on the
  cluster's subnet.
"""
from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import sys

from ..errors import ConfigError
from .hosts import SUBNET, Cluster


def mpiexec_path(explicit: str | None = None) -> str:
    """The launcher: ``explicit``, else the ``mpiexec`` beside this Python (the pip wheel's,
    in a virtual environment), else the first on ``PATH``."""
    if explicit:
        found = shutil.which(explicit)
        if not found:
            raise ConfigError(f"--mpiexec {explicit}: no such program")
        return found
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if not found:
        raise ConfigError("no mpiexec: install an MPI (pip install mpich) or give --mpiexec PATH")
    return found


@functools.lru_cache(maxsize=None)
def _version(mpiexec: str) -> str:
    """What ``mpiexec --version`` prints (asked once per launcher)."""
    try:
        return subprocess.run([mpiexec, "--version"], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ConfigError(f"{mpiexec} --version failed: {err}") from None


def flavour(mpiexec: str) -> str:
    """``hydra`` (MPICH and its family) or ``openmpi``, from ``mpiexec --version``."""
    text = _version(mpiexec)
    if "HYDRA" in text or "hydra" in text:
        return "hydra"
    if "Open MPI" in text or "OpenRTE" in text or "prte" in text.lower():
        return "openmpi"
    raise ConfigError(f"{mpiexec}: neither MPICH's hydra nor Open MPI's mpirun "
                      f"({text.strip().splitlines()[0] if text.strip() else 'no --version'}); "
                      "mpisgd cluster drives those two launchers")


def cores(c: Cluster, available: list[int] | None = None) -> list[list[int]]:
    """The machine's cores each node runs on: a block of its own while there are enough
    (so a node's ranks count their node's cores, as on separate hosts), one shared in
    turn when nodes outnumber cores."""
    have = sorted(available if available is not None else os.sched_getaffinity(0))
    if c.nodes <= len(have):
        share = len(have) // c.nodes
        return [have[i * share:(i + 1) * share] for i in range(c.nodes)]
    return [[have[i % len(have)]] for i in range(c.nodes)]


def write_shim(c: Cluster, directory: str) -> str:
    """The launcher's remote shell for cluster ``c``, written to ``directory/ssh``."""
    cases = "\n".join(f"    {c.address(i)}|{c.node(i)}) ns={c.node(i)}; cpus={','.join(map(str, cpu))} ;;"
                      for i, cpu in enumerate(cores(c)))
    text = f"""#!/bin/sh
# mpisgd cluster {c.name}: the launcher's "ssh", running its command on an emulated host
while [ $# -gt 0 ]; do
  case "$1" in
    -[1246AaCfGgKkMNnqsTtVXxYy]) shift ;;
    -[bcDEeFIiJLlmOoPpQRSWw]) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
host=$1; shift
case "$host" in
{cases}
    *) echo "mpisgd cluster {c.name}: no emulated host $host" >&2; exit 255 ;;
esac
exec taskset -c "$cpus" ip netns exec "$ns" unshare --uts sh -c "hostname $ns; $*"
"""
    path = os.path.join(directory, "ssh")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


def command(c: Cluster, kind: str, mpiexec: str, shim: str, directory: str,
            program: list[str]) -> list[str]:
    """The launch command for ``program`` on every rank of ``c``, to run in its switch."""
    n, r = c.nodes * c.ranks_per_node, c.ranks_per_node
    hostfile = os.path.join(directory, "hosts")
    with open(hostfile, "w", encoding="utf-8") as f:
        for i in range(c.nodes):
            f.write(f"{c.address(i)}:{r}\n" if kind == "hydra" else
                    f"{c.address(i)} slots={r}\n")
    inside = ["ip", "netns", "exec", c.switch]
    if kind == "hydra":
        return inside + [mpiexec, "-launcher", "ssh", "-launcher-exec", shim, "-f", hostfile,
                         "-iface", "br0", "-n", str(n), *program]
    subnet = f"{SUBNET}.0/24"
    if _openmpi_major(mpiexec) >= 5:        # the runtime (PRRTE) reads only its own flag
        runtime = ["--prtemca", "plm_ssh_agent", shim, "--prtemca", "oob_tcp_if_include", subnet]
    else:
        runtime = ["--mca", "plm_rsh_agent", shim, "--mca", "oob_tcp_if_include", subnet]
    return inside + [mpiexec, "--hostfile", hostfile, "-n", str(n), "--map-by", f"ppr:{r}:node",
                     *runtime, "--mca", "btl_tcp_if_include", subnet,
                     *(["--allow-run-as-root"] if os.geteuid() == 0 else []), *program]


def _openmpi_major(mpiexec: str) -> int:
    for word in _version(mpiexec).replace(")", " ").split():
        head = word.split(".")[0]
        if "." in word and head.isdigit():
            return int(head)
    return 5


def environment(c: Cluster) -> dict:
    """The job's environment: this one, plus what keeps the MPI on the emulated NICs and
    tells mpisgd what it runs on (``MPISGD_CLUSTER``: the network in words, for the summary
line). Where the
    ranks of all nodes outnumber the machine's cores, waiting ranks yield their core
    (``MPISGD_WAIT=yield``, and Open MPI's ``mpi_yield_when_idle``, unless set): a node's
    own count cannot see the other nodes. (Open MPI 5 on 2 nodes x 2 ranks, 2 cores: an
    8 MB Allreduce at 1 Gbit/s in 1.2 s spinning, 95 ms yielding; 67 ms is the NIC's.)"""
    env = dict(os.environ)
    env.update(MPIR_CVAR_CH4_NETMOD="ofi", FI_PROVIDER="tcp", FI_TCP_IFACE="eth0",
               UCX_TLS="tcp,self", OMPI_MCA_pml="ob1", MPISGD_CLUSTER=c.network())
    if c.nodes * c.ranks_per_node > len(os.sched_getaffinity(0)):
        env.setdefault("MPISGD_WAIT", "yield")     # the other nodes' ranks need these cores
        env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")    # and Open MPI's own waits
    return env


def quoted(cmd: list[str]) -> str:
    return " ".join(shlex.quote(w) for w in cmd)
