"""Emulated hosts: network namespaces joined by a switch, each with a NIC of a set rate.

One cluster named ``NAME`` of N nodes is N + 1 network namespaces, all its own::

    mpisgd-NAME-sw     the switch: bridge br0 (10.99.0.254/24), where the launcher
                       (mpiexec) runs; port nI for node I
    mpisgd-NAME-nI     node I: lo and eth0 (10.99.0.I+1/24), the other end
                       of the switch's port nI (a veth pair)

The NIC rate applies in each direction: a token bucket (``tc tbf``) on the node's
eth0 shapes what it sends, one on the switch's port nI what it receives. So a
node sends and receives at most RATE each, however many peers it talks to, as
through one NIC and a non-blocking switch. A bucket holds at least one packet
(``burst`` > MTU: below it TCP stalls for good) and otherwise 100 us of
traffic, so rates hold from a fraction of a millisecond up. Links carry jumbo
frames (MTU 9000) from 1 Gbit/s up, standard ones (1500) below, where two jumbo
frames would be 1.4 ms of traffic at 100 Mbit/s. Latency (``tc netem``, on the node's eth0:
one-way, node to node) needs the kernel's ``sch_netem``; where the kernel lacks
it, :func:`check_latency` says so in one line.

Nothing lands in the host's own namespace: no address, link, route or hosts
entry. The switch and its addresses live in a namespace of the cluster, so two
clusters side by side use the same addresses without meeting, and removing
the namespaces (:func:`down`) removes every link with them. Built on the
iproute2 commands (``ip -n NS``, ``tc -n NS``): every host that can create
network namespaces has them, no Python dependency comes with them, and the
commands this module runs (a failing one is named in its error) are the ones
an administrator would type to look or repeat.
"""
from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass

from ..errors import ConfigError

PREFIX = "mpisgd-"                 #: every namespace of every cluster starts with it
SUBNET = "10.99.0"                 #: per cluster, inside its own namespaces
SWITCH_IP = f"{SUBNET}.254"
MTU = 9000                         #: jumbo frames at 1 Gbit/s and up
SMALL_MTU = 1500                   #: below: a jumbo frame is too long a burst (0.7 ms at 100 Mbit/s)
MAX_NODES = 250

_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}


def parse_rate(text: str) -> float | None:
    """Bits per second of a NIC rate: ``1gbit``, ``2.5Gbit/s``, ``100mbit``, ``1e9``;
    ``None`` for ``none`` (links at veth speed: no shaping). ``ConfigError`` otherwise:
    tc's ``gbps`` means gigabytes, so byte units are refused rather than guessed."""
    spec = str(text).strip().lower().replace(" ", "")
    if spec in ("none", "unshaped", "0"):
        return None
    found = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[0-9]+)?)([kmgt]?)(bit(?:/s)?|bps|b/s)?", spec)
    if not found or (found.group(3) or "bit").startswith(("bps", "b/s")) or (
            found.group(2) and not found.group(3)):
        raise ConfigError(f"--nic {text}: give a rate in bits per second such as 1gbit, "
                          "10gbit, 100mbit or 2.5gbit (tc's gbps would be bytes), or none")
    rate = float(found.group(1)) * _UNITS[found.group(2)]
    if not 8e3 <= rate <= 4e12:
        raise ConfigError(f"--nic {text}: out of range (8kbit to 4tbit)")
    return rate


def parse_latency(text: str | None) -> float | None:
    """Seconds of a one-way latency (``50us``, ``1ms``, ``0.2ms``), or ``None``."""
    if text in (None, "", "0"):
        return None
    found = re.fullmatch(r"([0-9]*\.?[0-9]+)(s|ms|us|µs)", str(text).strip().lower())
    if not found:
        raise ConfigError(f"--latency {text}: give a time such as 50us, 1ms or 0.5ms")
    return float(found.group(1)) * _TIME[found.group(2)]


def valid_name(name: str) -> bool:
    return re.fullmatch(r"[a-z0-9][a-z0-9_]{0,19}", name or "") is not None


def check_name(name: str) -> str:
    """``name`` if it can name a cluster (its namespaces and its directory), else
    ``ConfigError``: 1-20 of a-z, 0-9 and _, never a path."""
    if not valid_name(name):
        raise ConfigError(f"--name {name}: 1-20 characters of a-z, 0-9 and _, "
                          "starting with a letter or digit")
    return name


def describe_rate(bits: float | None) -> str:
    """``1 Gbit/s``, ``2.5 Gbit/s``, ``100 Mbit/s``; ``unshaped`` for ``None``."""
    if bits is None:
        return "unshaped"
    for unit, scale in (("Tbit/s", 1e12), ("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bits >= scale:
            return f"{bits / scale:g} {unit}"
    return f"{bits:g} bit/s"


@dataclass
class Cluster:
    """The plan of one emulated cluster."""
    name: str
    nodes: int
    ranks_per_node: int
    nic: float | None = None               #: bits/s in each direction; None: unshaped
    latency: float | None = None           #: one-way seconds (netem); None: none added

    def __post_init__(self):
        check_name(self.name)
        if not 1 <= self.nodes <= MAX_NODES:
            raise ConfigError(f"--nodes must be 1..{MAX_NODES}, got {self.nodes}")
        if self.ranks_per_node < 1:
            raise ConfigError(f"--ranks-per-node must be a positive integer, "
                              f"got {self.ranks_per_node}")

    @property
    def switch(self) -> str:
        return f"{PREFIX}{self.name}-sw"

    def node(self, i: int) -> str:
        """Node i's namespace, which is also its hostname."""
        return f"{PREFIX}{self.name}-n{i}"

    def address(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    @property
    def namespaces(self) -> list[str]:
        return [self.switch] + [self.node(i) for i in range(self.nodes)]

    def network(self) -> str:
        """``NIC 1 Gbit/s (emulated)`` (and the latency, if any)."""
        nic = "NICs unshaped" if self.nic is None else f"NIC {describe_rate(self.nic)}"
        late = f", latency {self.latency * 1e6:g} us" if self.latency else ""
        return f"{nic}{late} (emulated)"

    def describe(self) -> str:
        """``4 nodes x 2 ranks, NIC 1 Gbit/s (emulated)``."""
        return (f"{self.nodes} node{'s' * (self.nodes != 1)} x {self.ranks_per_node} "
                f"rank{'s' * (self.ranks_per_node != 1)}, {self.network()}")

    def run(self, *cmd: str) -> str:
        """Run one iproute2 command; ``OSError`` naming it, with its message, if it fails."""
        done = _quiet(cmd)
        if done.returncode:
            raise OSError(f"{' '.join(cmd)}: {(done.stderr or done.stdout).strip()}")
        return done.stdout


def mtu(rate: float | None) -> int:
    """The links' MTU: jumbo frames, except below 1 Gbit/s where two of them (the least a
    token bucket may hold) would let 1.4 ms of traffic through at memory speed."""
    return SMALL_MTU if rate is not None and rate < 1e9 else MTU


def bucket(rate: float) -> tuple[int, int]:
    """(burst, queue limit) in bytes of a token bucket for ``rate`` bits/s: a burst of two
    jumbo frames or 100 us of traffic, whichever is more (a real NIC sends nothing above
    its rate: a larger burst lets messages below it through at memory speed, which the
    calibration would then see as bandwidth); a queue of 50 ms (at least 1 MB)."""
    per_second = rate / 8
    return (max(2 * mtu(rate), math.ceil(per_second * 1e-4)),
            max(1 << 20, math.ceil(per_second * 0.05)))


def _shape(c: Cluster, ns: str, dev: str, delay: float | None) -> None:
    """The NIC's queue on ``dev`` in namespace ``ns``: the rate, and ``delay`` before it."""
    parent = ["root"]
    if delay:
        c.run("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem",
              "delay", f"{delay * 1e6:.0f}us", "limit", "100000")
        parent = ["parent", "1:1"]
    if c.nic is not None:
        burst, limit = bucket(c.nic)
        c.run("tc", "-n", ns, "qdisc", "add", "dev", dev, *parent, "handle", "10:", "tbf",
              "rate", f"{c.nic:.0f}bit", "burst", str(burst), "limit", str(limit))


def up(c: Cluster) -> None:
    """Create the cluster's namespaces, switch, links and queues. On any failure what
    was made is removed again (:func:`down`) and the ``OSError`` raised (the
    ``ConfigError`` of :func:`check_latency`)."""
    try:
        for ns in c.namespaces:
            c.run("ip", "netns", "add", ns)
            c.run("ip", "-n", ns, "link", "set", "lo", "up")
        check_latency(c)
        frame = str(mtu(c.nic))
        c.run("ip", "-n", c.switch, "link", "add", "br0", "mtu", frame, "type", "bridge")
        c.run("ip", "-n", c.switch, "addr", "add", f"{SWITCH_IP}/24", "dev", "br0")
        c.run("ip", "-n", c.switch, "link", "set", "br0", "up")
        for i in range(c.nodes):
            node, port = c.node(i), f"n{i}"
            c.run("ip", "-n", c.switch, "link", "add", port, "mtu", frame, "type", "veth",
                  "peer", "name", "eth0", "mtu", frame, "netns", node)
            c.run("ip", "-n", c.switch, "link", "set", port, "master", "br0", "up")
            c.run("ip", "-n", node, "addr", "add", f"{c.address(i)}/24", "dev", "eth0")
            c.run("ip", "-n", node, "link", "set", "eth0", "up")
            _shape(c, node, "eth0", c.latency)        # what node i sends
            _shape(c, c.switch, port, None)            # what node i receives
    except BaseException:
        down(c.name)
        raise


def check_latency(c: Cluster) -> None:
    """``ConfigError`` in one line when ``--latency`` is asked of a kernel without netem
    (tried on the switch's loopback, right after it exists)."""
    if not c.latency:
        return
    probe = _quiet(["tc", "-n", c.switch, "qdisc", "add", "dev", "lo", "root", "netem",
                    "delay", "1us"])
    if probe.returncode:
        raise ConfigError("--latency needs the kernel's netem queue "
                          "(sch_netem), which this kernel does not have "
                          f"(tc: {probe.stderr.strip() or 'refused'}); the NIC rate alone "
                          "works without it")
    _quiet(["tc", "-n", c.switch, "qdisc", "del", "dev", "lo", "root"])


def _quiet(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run ``cmd`` in a session of its own: a Ctrl-C meant for mpisgd cluster (the
    terminal's whole process group) never kills a teardown's ``ip`` midway."""
    return subprocess.run(cmd, capture_output=True, text=True, start_new_session=True)


def namespaces(name: str | None = None) -> list[str]:
    """The network namespaces of cluster ``name`` (of every cluster if ``None``)."""
    done = _quiet(["ip", "netns", "list"])
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    start = PREFIX if name is None else f"{PREFIX}{name}-"
    return sorted(n for n in names if n.startswith(start))


def pids(ns: str) -> list[int]:
    """The processes inside namespace ``ns``; ``OSError`` if ``ip`` cannot tell."""
    done = _quiet(["ip", "netns", "pids", ns])
    if done.returncode:
        raise OSError(f"ip netns pids {ns}: {done.stderr.strip()}")
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def stop(name: str, grace: float = 2.0) -> None:
    """End every process in cluster ``name``'s namespaces: SIGTERM, then SIGKILL after
    ``grace`` seconds."""
    spaces = namespaces(name)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        alive = [p for ns in spaces for p in pids(ns)]
        for pid in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = [p for ns in spaces for p in pids(ns)]
        if not alive:
            return
    raise OSError(f"processes {alive} of cluster {name} outlived SIGKILL")


def down(name: str, grace: float = 2.0) -> list[str]:
    """Remove cluster ``name``: end every process in its namespaces (:func:`stop`), then
    the namespaces, which takes their links and queues with them. Returns the namespaces
    removed; idempotent. A namespace is never removed while processes may be in it
    (removed, it would hide them from every later teardown)."""
    stop(name, grace)
    spaces = namespaces(name)
    for ns in spaces:
        _quiet(["ip", "netns", "del", ns])
    return spaces
