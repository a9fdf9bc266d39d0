"""Processes, read from /proc: shared by the integration tests
(tests/integration, tests/integration/slurm), the chaos soak (tests/chaos)
and the benchmark (bench/).

One contract each; a pid that is gone (or unreadable) is never an error:

stat_field(pid, i)   field i (0-based, counted after the ")" that ends the
                     command name: 0 = state, 1 = ppid, 2 = pgid, ...) of
                     /proc/PID/stat as a string, or None.
proc_state(pid)      the one-letter state, or None.
pid_alive(pid)       True if PID exists and is not a zombie (pid 1 of a
                     container may not reap).
pid_pgid(pid), proc_ppid(pid)
                     its process group / parent pid, or None.
proc_start_time(pid) its start time (clock ticks since boot), to tell a
                     recorded pid from a reused one, or None.
children_of(pid)     the live direct children of PID.
cmdline(pid)         its argument list; [] if it is gone or has none.
"""
import os


def stat_field(pid, i):
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
        return data[data.rindex(")") + 2:].split()[i]
    except (OSError, ValueError, IndexError):
        return None


def _int_field(pid, i):
    v = stat_field(pid, i)
    return int(v) if v is not None else None


def proc_state(pid):
    return stat_field(pid, 0)


def pid_alive(pid):
    return proc_state(pid) not in (None, "Z", "X")


def proc_ppid(pid):
    return _int_field(pid, 1)


def pid_pgid(pid):
    return _int_field(pid, 2)


def proc_start_time(pid):
    return _int_field(pid, 19)


def children_of(pid):
    return [int(d) for d in os.listdir("/proc")
            if d.isdigit() and proc_ppid(int(d)) == pid and pid_alive(int(d))]


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []
