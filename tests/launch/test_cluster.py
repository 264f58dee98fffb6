"""``mpisgd cluster`` (mpisgd/emulated/): real MPI ranks on emulated nodes, as root.

Network namespaces as hosts, a bridge as the switch, a token bucket as each node's
NIC, MPICH's hydra starting its proxies inside them. Checked: the node groups MPI
finds, local ranks, that a large Allreduce takes at least what the shaped link
allows, a run's record and summary line, ``calibrate``'s two levels, a study's
sub-communicators across nodes, the launcher-of-N-with-world-1 check, refusals
in one line, and that the host is left as found: after a normal end, and after
SIGKILL of the launcher or of ``mpisgd cluster`` itself.
"""
import json
import os
import shutil
import signal
import queue
import subprocess
import sys
import threading
import time

import h5py
import pytest

HERE = os.path.dirname(__file__)
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("tc"),
                                reason="network namespaces need root and iproute2")
NIC_BITS = 1e9


def cluster(*args, timeout=240, **kw):
    return subprocess.run([sys.executable, "-m", "mpisgd", "cluster", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)


def host_state():
    """What a cluster could leave behind: namespaces, links, registrations, processes."""
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    home = os.readlink("/proc/self/ns/net")
    elsewhere = set()                       # processes in another network namespace
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/ns/net") != home:
                elsewhere.add(pid)
        except OSError:
            pass
    return {"netns": sorted(l.split()[0] for l in spaces.splitlines() if "mpisgd-" in l),
            "links": sorted(l.split(":")[1].strip() for l in links.splitlines()),
            "registered": sorted(os.listdir("/run/mpisgd/clusters"))
            if os.path.isdir("/run/mpisgd/clusters") else [],
            "procs": elsewhere}


def clean(before):
    now = host_state()
    assert now["netns"] == [] and now["procs"] <= before["procs"], now
    assert now["links"] == before["links"], now
    assert [r for r in now["registered"] if r != ".lock"] == [], now


def test_two_nodes_of_two_ranks_run_one_job_at_the_nic_rate_and_leave_nothing():
    before = host_state()
    n = 8 << 20
    done = cluster("--nodes", "2", "--ranks-per-node", "2", "--nic", "1gbit", "--",
                   sys.executable, os.path.join(HERE, "cluster_probe.py"), str(n))
    assert done.returncode == 0, done.stderr
    assert "2 nodes x 2 ranks, NIC 1 Gbit/s (emulated), up in" in done.stderr
    got = json.loads(done.stdout.splitlines()[-1])
    ranks = got["ranks"]
    hosts = [r["host"] for r in ranks]
    assert hosts[0] == hosts[1] != hosts[2] == hosts[3], hosts         # filled in order
    assert [r["processor"] for r in ranks] == hosts                     # MPI sees the nodes
    assert [(r["node_rank"], r["node_size"]) for r in ranks] == [(0, 2), (1, 2)] * 2
    assert [r["launcher_local"] for r in ranks] == [2] * 4              # MPI_LOCALNRANKS
    from mpisgd.device import choose        # GPU binding from these local ranks, stand-in counts
    assert [str(choose("auto", r["node_rank"], 2)) for r in ranks] == ["cuda:0", "cuda:1"] * 2
    assert [str(choose("auto", r["node_rank"], 1)) for r in ranks] == ["cuda:0"] * 4
    assert [str(choose("auto", r["node_rank"], 0)) for r in ranks] == ["cpu"] * 4
    assert all(r["sum_ok"] for r in ranks)
    assert {r["cluster"] for r in ranks} == {"NIC 1 Gbit/s (emulated)"}
    # Each node must receive the other's contribution to every element: n bytes through
    # its NIC at least (shared memory would take a few ms).
    bound = n * 8 / NIC_BITS
    assert got["allreduce_s"] >= 0.9 * bound, (got["allreduce_s"], bound)
    clean(before)


def test_a_killed_launcher_or_a_killed_cluster_command_leaves_the_next_one_a_clean_host():
    before = host_state()
    probe = [sys.executable, os.path.join(HERE, "cluster_probe.py"), "4096", "sleep"]
    for victim in ("mpiexec", "mpisgd cluster"):
        proc = subprocess.Popen([sys.executable, "-m", "mpisgd", "cluster", "--quiet", "--name", "busy",
                                 "--nodes", "2", "--ranks-per-node", "1", "--nic", "100mbit", "--",
                                 *probe], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        lines = queue.Queue()            # a reader thread: a readline alone could wait forever
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
        try:
            deadline = time.monotonic() + 120
            while "ready" not in lines.get(timeout=max(0.1, deadline - time.monotonic())):
                pass
            taken = cluster("--name", "busy", "--", "true", timeout=60)   # a live cluster's name
            assert taken.returncode == 2 and "cluster busy exists, owned by pid" in taken.stderr
            assert len(host_state()["netns"]) == 3, "a refused cluster touched the live one"
            if victim == "mpiexec":      # another name runs beside it, on the same addresses
                beside = cluster("--name", "beside", "--nodes", "2", "--", *probe[:3], timeout=120)
                assert beside.returncode == 0, beside.stderr
                assert "mpisgd-beside-n1" in beside.stdout
                assert len(host_state()["netns"]) == 3, "the second cluster left something"
            if victim == "mpiexec":
                launcher = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "mpiexec"],
                                          capture_output=True, text=True).stdout.split()
                os.kill(int(launcher[0]), signal.SIGKILL)
                assert proc.wait(timeout=60) == 128 + signal.SIGKILL   # it tore down, then said so
                clean(before)
            else:
                proc.kill()
                proc.wait()
                assert host_state()["netns"] != []      # left behind: nobody could clean up
        finally:
            proc.kill()                  # (its pipe stays open while what it left runs)
    done = cluster("--nodes", "2", "--nic", "1gbit", "--", sys.executable,
                   os.path.join(HERE, "cluster_probe.py"), "4096")
    assert done.returncode == 0, done.stderr
    assert "removed cluster busy, left by a process that is gone" in done.stderr
    clean(before)


def test_a_study_across_nodes_records_them_and_calibrate_fits_both_levels(tmp_path):
    before = host_state()
    (tmp_path / "grid.yaml").write_text(
        "algo: local\ntau: 2\nmodel: linear\ndata: synthetic:256\nsteps: 8\nbatch_size: 8\n"
        "group_size: node\ngrid:\n  ranks: [4, 2]\n")       # one group per node
    py = [sys.executable, "-m", "mpisgd"]
    done = cluster("--name", "studytest", "up", "--nodes", "2", "--ranks-per-node", "2",
                   "--nic", "1gbit")
    assert done.returncode == 0, done.stderr
    try:
        again = cluster("--name", "studytest", "up", "--nodes", "2")
        assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
        assert "cluster studytest exists, kept up" in again.stderr
        study = cluster("--name", "studytest", "--", *py, "study", "grid.yaml", "--out", "s",
                        cwd=tmp_path)
        assert study.returncode == 0, study.stdout + study.stderr
        with h5py.File(tmp_path / "s/runs/ranks-4.h5", "r") as f:
            hosts = [h.decode() for h in f["ranks/host"][()]]
            assert f.attrs["nodes"] == "2 nodes x 2 ranks, NIC 1 Gbit/s (emulated)"
            assert f.attrs["workers"] == 2 and f.attrs["world_size"] == 4   # node groups
            inside, across = f["groups/inside_bytes"][()], f["groups/across_bytes"][()]
        assert (across > 0).all() and (inside > across).all()   # every rank on the NIC, 1/2 each
        assert hosts == ["mpisgd-studytest-n0"] * 2 + ["mpisgd-studytest-n1"] * 2
        with h5py.File(tmp_path / "s/runs/ranks-2.h5", "r") as f:     # a sub-communicator
            assert [h.decode() for h in f["ranks/host"][()]] == ["mpisgd-studytest-n0"] * 2
            assert f.attrs["status"] == "completed"
            assert f.attrs["nodes"] == "1 node x 2 ranks, NIC 1 Gbit/s (emulated)"
            assert f.attrs["workers"] == 1           # one node: one group of both ranks
        cal = cluster("--name", "studytest", "--", *py, "calibrate", "--out", "net.json",
                      "--sizes", "8,1048576,4194304", cwd=tmp_path)
        assert cal.returncode == 0, cal.stderr
        assert "inside a node: alpha" in cal.stdout and "between nodes: alpha" in cal.stdout
        net = json.loads((tmp_path / "net.json").read_text())
        inter = 8 * net["levels"]["inter"]["bandwidth"]          # bits/s of 4 MB between nodes
        assert 0.85 * NIC_BITS < inter < 1.1 * NIC_BITS, inter     # the NIC, measured
        assert net["levels"]["intra"]["beta"] < net["levels"]["inter"]["beta"] / 2  # memory
        alone = cluster("--name", "studytest", "--", "sh", "-c",  # no PMI: a world of 1 each
                        f"env -u PMI_FD -u PMI_PORT {sys.executable} -c 'from mpi4py import MPI;"
                        "from mpisgd.mpienv import check_launch; check_launch(MPI.COMM_WORLD.Get_size())'")
        assert alone.returncode != 0
        assert "started 4 tasks (PMI_SIZE=4) but MPI sees a world of 1" in alone.stderr
    finally:
        down = cluster("down", "--name", "studytest")
    assert down.returncode == 0, down.stderr
    clean(before)


@pytest.mark.parametrize("args, message", [
    (["--latency", "1ms"], "--latency needs the kernel's netem queue (sch_netem)"),
    (["--nic", "1gbps"], "--nic 1gbps: give a rate in bits per second"),
    (["--nodes", "0"], "--nodes must be 1..250, got 0"),
    (["--name", "Bad-Name"], "--name Bad-Name: 1-20 characters"),
    (["down", "--name", "../.."], "--name ../..: 1-20 characters"),
    ([], "mpisgd cluster: no program to run"),
])
def test_bad_requests_are_one_line_and_leave_nothing(args, message):
    before = host_state()
    done = cluster(*args, *(["--", "true"] if args else []), timeout=60)
    if "netem" in message and done.returncode == 0:
        pytest.skip("this kernel has netem: --latency works here")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr
    clean(before)


def test_without_the_rights_it_names_them():
    done = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", sys.executable,
                           "-m", "mpisgd", "cluster", "--", "true"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "needs CAP_NET_ADMIN and CAP_SYS_ADMIN (root)" in done.stderr
