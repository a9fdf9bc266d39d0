"""Ports and waiting, shared by the integration tests (tests/integration,
tests/integration/slurm) and the benchmark (bench/).

One contract each:

free_port()          a TCP port that nothing on this machine listens on
                     right now, that binds on 127.0.0.1, and that this
                     process has not handed out before (so two servers of one
                     test session never get the same port); at most 65000, so
                     port+1.. stay in range (instance i of a service listens
                     on remote_port + i).
free_port_block(n)   p such that p .. p+n-1 are all such ports, handed out
                     together.
                     Both pick from SG_TEST_PORTS=LO-HI, by default
                     10000-31999: below the kernel's ephemeral range
                     (32768-60999), so no outgoing connection (a client's,
                     the gateway's to a service) takes the port between the
                     pick and the bind, and above clusterctl's picks
                     (2000-9999). Two test runs at once (make test runs the
                     plain and the sanitizer suites side by side) each get a
                     range of their own, so neither hands out a port the
                     other just found free.
port_listening(p)    True if some socket listens on port p (any address,
                     IPv4 or IPv6).
listening_ports(inodes=None)
                     the set of such ports; with inodes (socket inode
                     numbers, as strings), only those sockets' ports.
wait_until(pred, timeout, interval=0.05, msg=None)
                     call pred() until it returns a truthy value, which is
                     returned; an exception from pred counts as "not yet".
                     After timeout seconds (as given: callers scale it for a
                     slow build) raise WaitTimeout, an AssertionError naming
                     msg and the last exception or value seen.
"""
import os
import random
import socket
import time

# Ports handed out by this process: never the same one twice.
_used_ports = set()


class WaitTimeout(AssertionError):
    """wait_until's deadline passed."""


def listening_ports(inodes=None):
    """The ports some TCP socket listens on (any address, v4 or v6); with
    INODES (socket inode numbers, as strings), only those sockets' ports."""
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and (inodes is None or parts[9] in inodes):
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except (OSError, StopIteration):
            continue
    return ports


def port_listening(port):
    """True if some socket listens on PORT (any address, v4 or v6)."""
    return port in listening_ports()


def _bindable(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


DEFAULT_PORTS = "10000-31999"


def port_range():
    """(lo, hi) from SG_TEST_PORTS=LO-HI (default DEFAULT_PORTS). A
    malformed value is an error, not a silent fallback."""
    v = os.environ.get("SG_TEST_PORTS") or DEFAULT_PORTS
    try:
        lo, hi = (int(x) for x in v.split("-"))
    except ValueError:
        raise RuntimeError(f"SG_TEST_PORTS={v!r}: expected LO-HI, e.g. 33000-46000") from None
    if not 1024 <= lo < hi <= 65000:
        raise RuntimeError(f"SG_TEST_PORTS={v!r}: need 1024 <= LO < HI <= 65000")
    return lo, hi


def _candidate():
    p = random.randint(*port_range())
    return p if _bindable(p) else None


def free_port():
    """A port nothing listens on, bindable on 127.0.0.1, <= 65000, and not
    handed out before by this process, from SG_TEST_PORTS."""
    for _ in range(200):
        port = _candidate()
        if port is None or port in _used_ports or port > 65000 or port_listening(port):
            continue
        _used_ports.add(port)
        return port
    raise RuntimeError("no free port found")


def free_port_block(n):
    """p such that p .. p+n-1 are free and handed out to nobody else by this
    process (instance i of a service uses remote_port + i; a Slurm service
    may use one more for a handover)."""
    for _ in range(200):
        p = free_port()
        rest = range(p + 1, p + n)
        if p + n >= 65000 or p + n - 1 > port_range()[1] or \
                any(q in _used_ports or port_listening(q) or not _bindable(q) for q in rest):
            continue
        _used_ports.update(rest)
        return p
    raise RuntimeError(f"no block of {n} free ports")


def wait_until(pred, timeout, interval=0.05, msg=None):
    """pred() until truthy (returned) or timeout seconds pass (WaitTimeout,
    an AssertionError). Exceptions from pred count as "not yet"."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = pred()
            if v:
                return v
            last = v
        except Exception as e:  # noqa: BLE001 - a probe failing is "not yet"
            last = e
        if time.monotonic() >= deadline:
            text = msg or getattr(pred, "__name__", "condition")
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {text} "
                              f"(last: {last!r})")
        time.sleep(interval)
