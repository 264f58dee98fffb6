"""``mpisgd cluster``: an MPI job on emulated nodes with shaped NICs, on one machine.

::

    mpisgd cluster --nodes 4 --ranks-per-node 2 --nic 1gbit -- python -m mpisgd train ...
    mpisgd cluster up --name lab --nodes 4 --nic 1gbit    # kept up between jobs
    mpisgd cluster --name lab -- python -m mpisgd study grid.yaml --out s
    mpisgd cluster down --name lab                        # or: down --all
    mpisgd cluster list

The one-shot form brings the cluster up (:mod:`mpisgd.emulated.hosts`), runs the
program on every rank with the MPI's own launcher
(:mod:`mpisgd.emulated.launch`), and removes the cluster whatever happens: the
job's end, an error, SIGINT, SIGTERM or SIGHUP (forwarded to the launcher once,
which stops the ranks: ``mpisgd train`` checkpoints and exits 3; ranks still running
60 s later, or at a second signal, are killed). If this
process itself is killed, the next ``mpisgd cluster`` removes what it left
(:func:`mpisgd.emulated.registry.reap`). The exit status is the job's (128 + N
after signal N, unless the job chose its own).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

from ..emulated import hosts, launch, registry
from ..errors import ConfigError

CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21
#: signals passed on to the launcher, as the signal the ranks handle (hydra dies of SIGHUP;
#: mpisgd train checkpoints at SIGINT, SIGTERM and SIGUSR1, Slurm's warning)
FORWARDED = {"SIGINT": "SIGINT", "SIGTERM": "SIGTERM", "SIGHUP": "SIGTERM", "SIGUSR1": "SIGUSR1"}
GRACE = 60.0             #: seconds the ranks have to stop after a forwarded signal


def check_rights() -> None:
    """``ConfigError`` in one line unless this process may create network namespaces,
    links and queues and set a hostname (CAP_NET_ADMIN and CAP_SYS_ADMIN: root), and the
    tools it drives are installed."""
    missing = [tool for tool in ("ip", "tc", "unshare", "taskset") if shutil.which(tool) is None]
    if missing:
        raise ConfigError(f"mpisgd cluster needs {', '.join(missing)} (Debian: apt-get install "
                          "iproute2 util-linux)")
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            caps = int(next(line for line in f if line.startswith("CapEff:")).split()[1], 16)
    except (OSError, StopIteration, ValueError):
        caps = 0
    lacking = [name for bit, name in ((CAP_NET_ADMIN, "CAP_NET_ADMIN"),
                                      (CAP_SYS_ADMIN, "CAP_SYS_ADMIN")) if not caps >> bit & 1]
    if lacking:
        raise ConfigError(f"mpisgd cluster needs {' and '.join(lacking)} (root) to create network "
                          "namespaces and name their hosts; run it as root, e.g. sudo -E "
                          f"{sys.executable} -m mpisgd cluster ...")


def bring_up(c: hosts.Cluster, keep: bool = False) -> str:
    """Remove stale clusters, register ``c`` as this process's and create it; then, if
    ``keep``, register it as kept up (owned by no process). Its directory (shim, host
    file). ``ConfigError`` (nothing made, nothing removed) when the name is taken."""
    with registry.locked():
        for name in registry.reap():
            print(f"mpisgd cluster: removed cluster {name}, left by a process that is gone",
                  file=sys.stderr)
        path = registry.claim(c)              # a kill from here on leaves a stale cluster
        try:
            hosts.up(c)
        except BaseException as err:
            registry.remove(c.name)
            if isinstance(err, OSError):
                raise ConfigError(f"cluster {c.name}: cannot create the emulated network: {err}") \
                    from None
            raise
        if keep:
            registry.claim(c, keep=True, mine=True)
    return path


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def _signals(handler):
    """``handler`` for every signal in :data:`FORWARDED` inside the block."""
    previous = {}
    try:
        for name in FORWARDED:
            sig = getattr(signal, name)
            previous[sig] = signal.signal(sig, handler)
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run(c: hosts.Cluster, program: list[str], mpiexec: str | None, quiet: bool,
        created: bool) -> int:
    """Run ``program`` on every rank of ``c`` (brought up by :func:`bring_up` if ``created``,
    removed afterwards then); the job's exit status."""
    if not program:
        raise ConfigError("mpisgd cluster: no program to run (mpisgd cluster [OPTIONS] -- "
                          "python -m mpisgd train ...)")
    exe = launch.mpiexec_path(mpiexec)
    kind = launch.flavour(exe)
    received: list[int] = []
    since = [0.0]                        # when the first signal came
    job = None

    def forward(signum, _frame):
        received.append(signum)
        since[0] = since[0] or time.monotonic()
        if job is None:
            return                       # passed on once the launcher exists
        if len(received) == 1:
            job.send_signal(getattr(signal, FORWARDED[signal.Signals(signum).name]))
        else:
            job.kill()                   # a second signal: now; the teardown ends the ranks

    claimed = False
    with _signals(forward):              # from here, no signal skips the teardown
        try:
            t0 = time.perf_counter()
            if created:
                path = bring_up(c)
                claimed = True
            else:
                path = registry.directory(c.name)
            shim = launch.write_shim(c, path)
            cmd = launch.command(c, kind, exe, shim, path, program)
            if not quiet:
                print(f"mpisgd cluster {c.name}: {c.describe()}, up in "
                      f"{time.perf_counter() - t0:.1f} s; {launch.quoted(program)}",
                      file=sys.stderr, flush=True)
            if received:
                return 128 + received[0]
            job = subprocess.Popen(cmd, env=launch.environment(c), start_new_session=True)
            if received:                 # one came while the launcher started
                job.send_signal(getattr(signal, FORWARDED[signal.Signals(received[0]).name]))
            while True:
                try:
                    code = job.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    if received and time.monotonic() - since[0] > GRACE:
                        job.kill()       # the ranks had their grace: the teardown ends them
            if code < 0:
                code = 128 - code
            return code if code or not received else 128 + received[0]
        finally:
            if job is not None and job.poll() is None:
                job.kill()
                job.wait()
            if claimed:                  # only what this call made: never another's cluster
                with registry.locked():
                    registry.remove(c.name)
            elif job is not None:        # a kept cluster: its nodes' processes of this job
                hosts.stop(c.name)


def main(action: str, name: str | None, nodes: int, ranks_per_node: int, nic: str,
         latency: str | None, mpiexec: str | None, program: list[str], quiet: bool = False,
         every: bool = False) -> int:
    if action == "list":
        for n in registry.names():
            owner = registry.read(n)
            c = registry.cluster(n)
            state = ("stale" if owner is None or not registry.alive(owner) else
                     "kept up" if owner["pid"] is None else f"pid {owner['pid']}")
            print(f"{n}: {c.describe() if c else 'namespaces only'}, {state}")
        return 0
    check_rights()
    if action == "down":
        if not name and not every:
            raise ConfigError("mpisgd cluster down: give --name NAME, or --all")
        if name:
            hosts.check_name(name)
        with registry.locked():
            for n in (registry.names() if every else [name]):
                known = registry.read(n) is not None
                if registry.remove(n) or known:
                    print(f"mpisgd cluster: removed {n}", file=sys.stderr)
                elif not quiet:
                    print(f"mpisgd cluster: no cluster {n}", file=sys.stderr)
        return 0
    kept = registry.cluster(name) if name and action == "run" else None
    if kept is not None and registry.read(name)["pid"] is None:
        return run(kept, program, mpiexec, quiet, created=False)
    c = hosts.Cluster(name or f"c{os.getpid()}", nodes, ranks_per_node, hosts.parse_rate(nic),
                      hosts.parse_latency(latency))
    if action == "up":
        if program:
            raise ConfigError("mpisgd cluster up takes no program; run one with mpisgd cluster "
                              f"--name {c.name} -- PROGRAM")
        if not name:
            raise ConfigError("mpisgd cluster up: give it a --name, to run on it and remove it")
        with _signals(_interrupt):
            bring_up(c, keep=True)           # a signal midway: what was made is removed
        print(f"mpisgd cluster {c.name}: {c.describe()}, up; run with mpisgd cluster --name "
              f"{c.name} -- PROGRAM; remove with mpisgd cluster down --name {c.name}",
              file=sys.stderr)
        return 0
    return run(c, program, mpiexec, quiet, created=True)
