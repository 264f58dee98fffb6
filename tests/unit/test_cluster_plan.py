"""The emulated cluster's plan, without creating it (no root): rates, names, the shim's
host table, the launch command, and how a run on several nodes is described."""
import os

import pytest

from mpisgd import device
from mpisgd.app.calibrate import pairs
from mpisgd.emulated import hosts, launch
from mpisgd.errors import ConfigError


@pytest.mark.parametrize("text, bits", [("1gbit", 1e9), ("2.5Gbit/s", 2.5e9), ("100mbit", 1e8),
                                        ("1e9", 1e9), ("none", None), ("10 Gbit", 1e10)])
def test_rates_in_bits_per_second(text, bits):
    assert hosts.parse_rate(text) == bits


@pytest.mark.parametrize("text", ["1gbps", "1GB/s", "fast", "1g", "1kbit", "9tbit"])
def test_byte_units_and_nonsense_are_refused_naming_the_option(text):
    with pytest.raises(ConfigError, match=rf"^--nic {text}: "):
        hosts.parse_rate(text)


def test_latency_and_descriptions():
    assert hosts.parse_latency("50us") == pytest.approx(5e-5)
    assert hosts.parse_latency("1.5ms") == pytest.approx(1.5e-3)
    assert hosts.parse_latency(None) is None
    with pytest.raises(ConfigError, match="--latency 3 parsecs"):
        hosts.parse_latency("3 parsecs")
    c = hosts.Cluster("lab", 4, 2, 1e9)
    assert c.describe() == "4 nodes x 2 ranks, NIC 1 Gbit/s (emulated)"
    assert hosts.Cluster("x", 1, 1, None, 1e-4).describe() == \
        "1 node x 1 rank, NICs unshaped, latency 100 us (emulated)"
    assert c.namespaces == ["mpisgd-lab-sw"] + [f"mpisgd-lab-n{i}" for i in range(4)]
    assert [c.address(i) for i in (0, 3)] == ["10.99.0.1", "10.99.0.4"]


def test_a_bucket_holds_two_jumbo_frames_or_100_us():
    assert hosts.bucket(1e9) == (18000, 6_250_000)          # 12.5 kB < two frames
    assert hosts.bucket(1e10)[0] == 125_000                 # 100 us at 10 Gbit/s
    assert hosts.bucket(1e8) == (3000, 1 << 20)             # 1500-byte frames below 1 Gbit/s


def test_the_shim_knows_each_host_and_the_launch_commands(tmp_path):
    c = hosts.Cluster("lab", 2, 3, 1e9)
    shim = launch.write_shim(c, str(tmp_path))
    text = open(shim).read()
    assert os.access(shim, os.X_OK)
    assert "10.99.0.2|mpisgd-lab-n1) ns=mpisgd-lab-n1; cpus=" in text
    assert 'exec taskset -c "$cpus" ip netns exec "$ns" unshare --uts sh -c "hostname $ns; $*"' in text
    hydra = launch.command(c, "hydra", "/x/mpiexec", shim, str(tmp_path), ["python", "t.py"])
    assert hydra[:4] == ["ip", "netns", "exec", "mpisgd-lab-sw"]
    assert hydra[4:] == ["/x/mpiexec", "-launcher", "ssh", "-launcher-exec", shim, "-f",
                         str(tmp_path / "hosts"), "-iface", "br0", "-n", "6", "python", "t.py"]
    assert (tmp_path / "hosts").read_text() == "10.99.0.1:3\n10.99.0.2:3\n"
    env = launch.environment(c)
    assert env["MPIR_CVAR_CH4_NETMOD"] == "ofi" and env["FI_PROVIDER"] == "tcp"
    assert env["MPISGD_CLUSTER"] == "NIC 1 Gbit/s (emulated)"


def test_each_node_gets_its_own_cores_while_there_are_enough():
    assert launch.cores(hosts.Cluster("a", 2, 1), [0, 1, 2, 3, 4]) == [[0, 1], [2, 3]]
    assert launch.cores(hosts.Cluster("a", 3, 1), [0, 1]) == [[0], [1], [0]]
    assert launch.cores(hosts.Cluster("a", 1, 4), [5, 7]) == [[5, 7]]


def test_names_are_checked():
    for bad in ("", "Lab", "a-b", "x" * 21, "..", "../.."):
        with pytest.raises(ConfigError, match="--name"):
            hosts.Cluster(bad, 2, 1)
    with pytest.raises(ConfigError, match="--ranks-per-node must be a positive integer, got 0"):
        hosts.Cluster("ok", 2, 0)


def test_a_run_on_several_nodes_is_described_and_calibrated_by_level():
    assert device.layout(["a"] * 4) == ""
    assert device.layout(["a", "a", "b", "b"]) == "2 nodes x 2 ranks"
    assert device.layout(["a", "b", "c"]) == "3 nodes x 1 rank"
    assert device.layout(["a", "a", "b"]) == "3 ranks on 2 nodes"
    assert device.layout(["a", "a"], "NIC 1 Gbit/s (emulated)") == \
        "1 node x 2 ranks, NIC 1 Gbit/s (emulated)"        # a study's task on one node
    assert pairs(["a"] * 3) == {"p2p": 2}
    assert pairs(["a", "a", "b", "b"]) == {"intra": 1, "inter": 2}
    assert pairs(["a", "b", "c"]) == {"inter": 1}
