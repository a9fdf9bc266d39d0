"""The multi-node test cluster and real node addresses (issue 8, items 4-5).

Each compute node is a slurmd in a network namespace of its own, with its
own address (NodeAddr); node names do not resolve on this host, as on many
real clusters' login nodes. A service that binds only its node's address is
reached through the ssh forward and directly, because the gateway forwards
to the node's address as Slurm knows it, not to its name.

Every wait is a poll against a deadline; all traffic stays on 127.0.0.1 and
the test namespaces' addresses.
"""
import json
import os
import socket
import subprocess

import pytest

from conftest import SLACK, free_port, pid_alive, wait_until
from slurmlib import (CLUSTERCTL, cluster, demo_job_script, nodes, slurm_gateway,  # noqa: F401
                      slurm_service)


def refused(addr, port):
    """True if nothing listens on addr:port (connection refused)."""
    try:
        with socket.create_connection((addr, port), timeout=5 * SLACK):
            return False
    except ConnectionRefusedError:
        return True


def direct_service(cluster, job, **kw):
    """A Slurm service without remote_host: the gateway runs the Slurm
    commands itself and reaches the node directly."""
    svc = slurm_service(cluster, job, **kw)
    for k in ("remote_host", "ssh_port", "ssh_username", "ssh_key_file"):
        svc.pop(k)
    return svc


def test_cluster_nodes_are_namespaces_with_their_own_addresses(cluster):
    assert len(cluster.nodes) >= 2, cluster.nodes
    addrs = [n["addr"] for n in cluster.nodes]
    assert len(set(addrs)) == len(addrs), addrs
    # what Slurm knows
    out = cluster.run("sinfo", "-h", "-N", "-p", cluster.partition, "-o", "%N|%o|%T")
    rows = sorted(tuple(line.split("|")) for line in out.split())
    assert rows == sorted((n["name"], n["addr"], "idle") for n in cluster.nodes), rows
    for n in cluster.nodes:
        # the point of NodeAddr: the names do not resolve here
        with pytest.raises(socket.gaierror):
            socket.getaddrinfo(n["name"], None)
        # hostname = node name, and the node's only non-loopback address is its own
        p = cluster.node_exec(n["name"], "sh", "-c", "hostname; ip -4 -o addr show dev eth0; ip route")
        host, addr_line, *routes = p.stdout.splitlines()
        assert host == n["name"], p.stdout
        assert f" {n['addr']}/" in addr_line, p.stdout
        assert not any(r.startswith("default") for r in routes), p.stdout   # no way out
        # its slurmd runs in that namespace
        pid = int(open(f"{cluster.dir}/slurm/slurmd-{n['name']}.pid").read())
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    # nodes reach each other over the bridge
    a, b = cluster.nodes[0], cluster.nodes[1]
    p = cluster.node_exec(a["name"], "python3", "-c",
                          "import socket,sys; s=socket.socket(); s.settimeout(5); "
                          "sys.exit(0 if s.connect_ex((sys.argv[1], int(sys.argv[2]))) in (0, 111) "
                          "else 1)", b["addr"], str(cluster.env["slurmd_port"]), check=False)
    assert p.returncode == 0, p


def test_node_addr_forward_to_node2_service_bound_to_its_address(cluster, slurm_gateway,
                                                                 tmp_path):
    """A job on node2 whose service binds only node2's address: the ssh
    forward goes to NodeAddr (on c095a72 it went to the name "node2", which
    the login node cannot resolve: the forward failed)."""
    node2 = cluster.node_names[1]
    addr2 = cluster.node_addr(node2)
    job = demo_job_script(tmp_path / "job.sh")
    svc = slurm_service(cluster, job, sbatch_args=[f"--chdir={cluster.work_dir}", "-w", node2])
    g = slurm_gateway([svc])
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, (r, g.log())
    demo_pid = r.json()["pid"]
    [inst] = g.svc()["instances"]
    assert inst["node"] == node2, inst
    assert cluster.job_node(inst["job_id"]) == node2
    host, _, lport = inst["address"].rpartition(":")
    assert host == "127.0.0.1" and int(lport) != svc["remote_port"], inst   # through the tunnel
    # the service listens on node2's address only
    assert cluster.http_get(addr2, svc["remote_port"], "/health")[0] == 200
    assert refused(cluster.node_addr(cluster.node_names[0]), svc["remote_port"])
    assert refused("127.0.0.1", svc["remote_port"])
    # the traffic went through the forward (the demo sees the login node's bridge address)
    r = g.get("/llm/echo", timeout=10)
    assert r.status == 200, r
    assert r.json()["peer"] == cluster.env["bridge_addr"], r.json()
    r = g.get("/llm/pid", timeout=10)
    assert r.status == 200 and r.json()["pid"] == demo_pid, r
    assert "forward to" not in g.log() and "cannot" not in g.log(), g.log()


def test_node_addr_direct_mode_reaches_node2(cluster, slurm_gateway, tmp_path):
    """Without remote_host the node is reached directly, at its NodeAddr (on
    c095a72 getaddrinfo("node2") failed: "cannot resolve node"). The start
    script runs the server as a child (no exec), as real ones do."""
    node2 = cluster.node_names[1]
    addr2 = cluster.node_addr(node2)
    job = demo_job_script(tmp_path / "job.sh", exec_=False)
    svc = direct_service(cluster, job, timeout=3,
                         sbatch_args=[f"--chdir={cluster.work_dir}", f"--exclude={cluster.node}"])
    g = slurm_gateway([svc], env={"SLURM_CONF": cluster.slurm_conf})
    name = g.job_name()
    r = g.get("/llm/pid", timeout=60)
    assert r.status == 200, (r, g.log())
    demo_pid = r.json()["pid"]
    [inst] = g.svc()["instances"]
    assert inst["node"] == node2, inst
    assert inst["address"] == f"{addr2}:{svc['remote_port']}", inst
    assert g.master_pids() == [] and g.ssh_leftovers() == []
    assert refused("127.0.0.1", svc["remote_port"])
    # idle: cancelled, the server (a child of the script) ends with the job
    wait_until(lambda: not cluster.live_jobs(name), (3 + 2 * 2 + 4) * SLACK, interval=0.2,
               msg="the idle job to be cancelled")
    wait_until(lambda: not pid_alive(demo_pid), 10 * SLACK, msg="the demo server to end")
    wait_until(lambda: refused(addr2, svc["remote_port"]), 10 * SLACK)


def test_nodes_fixture_drained_node1_puts_the_job_on_node2(nodes, slurm_gateway, tmp_path):
    """The `nodes` fixture: a test may drain or down nodes; they are idle
    again afterwards. With node1 drained the job runs on node2 and is served
    there."""
    cluster = nodes
    node1, node2 = cluster.node_names[:2]
    cluster.scontrol_node(node1, "drain", reason="test drain")
    cluster.wait_node_state(node1, "drained")
    job = demo_job_script(tmp_path / "job.sh")
    svc = slurm_service(cluster, job)
    g = slurm_gateway([svc])
    r = g.get("/llm/health", timeout=60)
    assert r.status == 200, (r, g.log())
    [inst] = g.svc()["instances"]
    assert inst["node"] == node2, inst
    assert cluster.wait_node_state(node1, "drained") == "drained"


def test_clusterctl_stop_removes_namespaces_veths_and_bridge(tmp_path):
    """A second, one-node cluster next to the shared one: its own subnet,
    bridge and namespaces, all gone after stop."""
    d = tmp_path / "c2"
    env = dict(os.environ, CLUSTERCTL_NODES="1")
    ctl = str(CLUSTERCTL)
    p = subprocess.run([ctl, "start", str(d)], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=120)
    try:
        assert p.returncode == 0, p.stdout
        e = json.loads((d / "env.json").read_text())
        [n] = e["nodes"]
        assert os.path.exists(f"/run/netns/{n['netns']}")
        links = subprocess.run(["ip", "-o", "link"], stdout=subprocess.PIPE, text=True,
                               timeout=10).stdout
        assert f" {e['bridge']}:" in links and f" {n['veth']}@" in links, links
    finally:
        s = subprocess.run([ctl, "stop", str(d)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=120)
    assert s.returncode == 0, s.stdout
    assert not os.path.exists(f"/run/netns/{n['netns']}")
    links = subprocess.run(["ip", "-o", "link"], stdout=subprocess.PIPE, text=True,
                           timeout=10).stdout
    assert f" {e['bridge']}:" not in links and f" {n['veth']}@" not in links, links
    assert not (d / "net.env").exists()


def test_nodes_fixture_suspend_down_and_reset(nodes, tmp_path):
    """The node helpers at the Slurm level (no gateway): suspend/resume, a
    node set DOWN requeues its job, a killed slurmd; the fixture puts every
    node back."""
    c = nodes
    node1 = c.node_names[0]
    job = demo_job_script(tmp_path / "job.sh", exec_=False)
    port = free_port()
    jid = c.run("sbatch", "--parsable", f"--chdir={c.work_dir}", "-w", node1, str(job),
                str(port)).strip()
    try:
        wait_until(lambda: c.show_job(jid)["JobState"] == "RUNNING" and c.job_node(jid) == node1,
                   30 * SLACK, interval=0.2)
        wait_until(lambda: c.http_get(c.node_addr(node1), port, "/health")[0] == 200,
                   20 * SLACK, interval=0.2)
        c.scontrol("suspend", jid)
        assert c.show_job(jid)["JobState"] == "SUSPENDED"
        c.scontrol("resume", jid)
        assert c.show_job(jid)["JobState"] == "RUNNING"
        assert c.http_get(c.node_addr(node1), port, "/health")[0] == 200
        c.slurmd_stop(node1)
        c.scontrol_node(node1, "down", reason="test node failure")
        wait_until(lambda: c.show_job(jid)["JobState"] == "PENDING", 20 * SLACK, interval=0.2,
                   msg="the job on the DOWN node to be requeued")
        assert c.wait_node_state(node1, lambda st: st.startswith("down"))
    finally:
        c.scancel(jid)
