"""`make install` (mk/install.mk) into a staging DESTDIR: every file lands
where it should with the right mode, the installed binary runs, the remote
agent is installed as shipped (for the admin to copy to a login node), the installed
example config passes `slurmgate -t`, the man pages render without warnings,
the systemd unit passes `systemd-analyze verify` (when that tool exists), an
admin's config survives a reinstall, `uninstall` removes what install put
there, and the fragment leaves the top Makefile's default goal alone.

Needs make, man (man-db) and groff (groff-base); systemd-analyze (systemd) is
optional.
"""
import os
import re
import shutil
import stat
import subprocess

import pytest

from conftest import REPO

MAN_PAGES = [("man8", "slurmgate.8"), ("man5", "slurmgate.json.5")]


def make_env():
    """The environment without a parent make's settings (jobserver fds that
    are not inherited, -n, ...)."""
    env = dict(os.environ)
    for k in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "DESTDIR", "PREFIX"):
        env.pop(k, None)
    return env


def make(*args, timeout=600):
    """make -C REPO ARGS. Until the top Makefile includes mk/install.mk, the
    fragment is read with a second -f, which is what the include does."""
    cmd = ["make", "--no-print-directory", "-C", str(REPO)]
    top = (REPO / "Makefile").read_text()
    if not re.search(r"^\s*-?include\s+.*\bmk/install\.mk\b", top, re.M):
        cmd += ["-f", "Makefile", "-f", "mk/install.mk"]
    r = subprocess.run(cmd + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=timeout, env=make_env())
    return r


def install(root, prefix="/usr", target="install"):
    r = make(target, f"DESTDIR={root}", f"PREFIX={prefix}")
    assert r.returncode == 0, f"make {target} failed:\n{r.stdout}"
    return r.stdout


def mode(p):
    return stat.S_IMODE(p.stat().st_mode)


def version():
    m = re.search(r'SLURMGATE_VERSION\s+"([^"]+)"', (REPO / "src" / "version.h").read_text())
    return m.group(1)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One install with PREFIX=/usr, shared by the read-only checks."""
    d = tmp_path_factory.mktemp("destdir")
    install(d)
    return d


def need(tool, package):
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is missing: apt-get install {package}", pytrace=False)
    return path


# --------------------------------------------------------------------------


def test_files_land_where_expected(root):
    expected = {
        "usr/sbin/slurmgate": 0o755,
        "usr/lib/systemd/system/slurmgate.service": 0o644,
        "usr/share/man/man8/slurmgate.8": 0o644,
        "usr/share/man/man5/slurmgate.json.5": 0o644,
        "usr/share/slurmgate/slurmgate-agent": 0o755,
        "etc/slurmgate/slurmgate.json": 0o640,
    }
    for rel, m in expected.items():
        p = root / rel
        assert p.is_file(), f"{rel} not installed"
        assert mode(p) == m, f"{rel}: mode {mode(p):o}, expected {m:o}"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == sorted(expected), files
    assert (root / "etc/slurmgate/slurmgate.json").read_bytes() == \
        (REPO / "examples/slurmgate.json").read_bytes()


def test_installed_binary_runs(root):
    r = subprocess.run([str(root / "usr/sbin/slurmgate"), "--version"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=10)
    assert r.returncode == 0, r.stdout
    assert r.stdout.strip() == f"slurmgate {version()}"


def test_installed_agent_is_the_shipped_script(root):
    """The remote agent runs on the login node, not here: installed as it is
    shipped, executable (scp keeps the mode), and a valid sh script."""
    agent = root / "usr/share/slurmgate/slurmgate-agent"
    assert agent.read_bytes() == (REPO / "remote/slurmgate-agent").read_bytes()
    r = subprocess.run(["sh", "-n", str(agent)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=10)
    assert r.returncode == 0, r.stdout


def test_install_names_where_the_agent_went(tmp_path):
    out = install(tmp_path)
    assert "copy /usr/share/slurmgate/slurmgate-agent to the login node" in out, out


def test_installed_example_config_passes_check(root, tmp_path):
    # the example's ssh key is the admin's to create: -t names it until then
    cfg = root / "etc/slurmgate/slurmgate.json"
    r = subprocess.run([str(root / "usr/sbin/slurmgate"), "-t", "-c", str(cfg)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=10)
    assert r.returncode == 1, r.stdout
    assert all("ssh_key_file: /etc/slurmgate/ssh/id_ed25519" in ln
               for ln in r.stdout.splitlines()), r.stdout
    key = tmp_path / "id_ed25519"
    key.write_text("key\n")
    mine = tmp_path / "slurmgate.json"
    mine.write_text(cfg.read_text().replace("/etc/slurmgate/ssh/id_ed25519", str(key)))
    r = subprocess.run([str(root / "usr/sbin/slurmgate"), "-t", "-c", str(mine)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=10)
    assert r.returncode == 0, r.stdout
    assert r.stdout.strip() == f"{mine}: ok (3 services)"


def test_unit_points_at_the_installed_binary(root):
    unit = (root / "usr/lib/systemd/system/slurmgate.service").read_text()
    settings = [l for l in unit.splitlines() if l.strip() and not l.startswith("#")]
    assert not [l for l in settings if "/usr/local" in l], settings
    execs = re.findall(r"^(Exec\w+)=(.*)$", unit, re.M)
    assert ("ExecStartPre", "/usr/sbin/slurmgate -t -c /etc/slurmgate/slurmgate.json") in execs
    assert ("ExecStart", "/usr/sbin/slurmgate -c /etc/slurmgate/slurmgate.json") in execs
    assert ("ExecReload", "/bin/kill -HUP $MAINPID") in execs
    for key in ("Type=exec", "KillMode=mixed", "StateDirectory=slurmgate", "Restart=on-failure",
                "NoNewPrivileges=yes"):
        assert re.search(rf"^{re.escape(key)}$", unit, re.M), key


@pytest.mark.parametrize("section,name", MAN_PAGES)
def test_man_pages_render_without_warnings(root, section, name):
    man = need("man", "man-db")
    need("groff", "groff-base")
    page = root / "usr/share/man" / section / name
    env = dict(os.environ, MANWIDTH="80", MAN_KEEP_FORMATTING="", LC_ALL="C.UTF-8")
    env.pop("MANPAGER", None)
    env.pop("PAGER", None)
    r = subprocess.run([man, "--warnings", "-l", str(page)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=30, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    assert name.split(".")[0].upper() in r.stdout and "SEE ALSO" in r.stdout
    # found by name under the installed man tree, as Documentation=man:... needs
    title = name.rsplit(".", 1)[0]
    r = subprocess.run([man, "-w", f"{title}({section[3:]})"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=30,
                       env=dict(env, MANPATH=str(root / "usr/share/man")))
    assert r.returncode == 0 and r.stdout.strip() == str(page), (r.stdout, r.stderr)


def test_man_page_documents_every_config_key(root):
    """slurmgate.json(5) names every key that src/config.c accepts."""
    src = (REPO / "src/config.c").read_text()
    keys = set(re.findall(r'^\s*\{"(\w+)", F_[A-Z]+,', src, re.M))
    keys |= {"Services", "listen", "api_keys"}   # read outside the tables
    assert len(keys) > 40, keys
    page = (root / "usr/share/man/man5/slurmgate.json.5").read_text().replace("\\-", "-")
    missing = sorted(k for k in keys if not re.search(rf"\b{re.escape(k)}\b", page))
    assert not missing, f"keys of src/config.c not in slurmgate.json(5): {missing}"


def test_unit_passes_systemd_analyze_verify(root, tmp_path):
    sa = shutil.which("systemd-analyze")
    if sa is None:
        pytest.skip("systemd-analyze is not installed")
    # The unit names /usr/sbin/slurmgate; verify a copy that names the staged
    # binary instead (verify checks that the Exec binaries exist), with the
    # staged man pages visible for Documentation=man:... .
    unit = (root / "usr/lib/systemd/system/slurmgate.service").read_text()
    copy = tmp_path / "slurmgate.service"
    copy.write_text(unit.replace("/usr/sbin/slurmgate", str(root / "usr/sbin/slurmgate")))
    env = dict(os.environ, MANPATH=str(root / "usr/share/man"), SYSTEMD_LOG_COLOR="0")
    r = subprocess.run([sa, "verify", str(copy)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stdout
    assert r.stdout.strip() == "", r.stdout


def test_reinstall_keeps_the_admins_config(tmp_path):
    install(tmp_path)
    cfg = tmp_path / "etc/slurmgate/slurmgate.json"
    cfg.write_text('{"Services": []}\n')
    cfg.chmod(0o600)
    out = install(tmp_path)
    assert cfg.read_text() == '{"Services": []}\n'
    assert mode(cfg) == 0o600
    assert "keeping the existing" in out, out


def test_uninstall_removes_what_install_put_there(tmp_path):
    install(tmp_path)
    out = install(tmp_path, target="uninstall")
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["etc/slurmgate/slurmgate.json"], left
    assert not (tmp_path / "usr/share/slurmgate").exists()   # the agent's directory too
    assert "kept" in out


@pytest.mark.parametrize("prefix,unitdir", [
    ("/usr/local", "usr/local/lib/systemd/system"),
    ("/opt/slurmgate", "etc/systemd/system"),      # systemd does not look under /opt
])
def test_other_prefixes(tmp_path, prefix, unitdir):
    install(tmp_path, prefix=prefix)
    p = prefix.lstrip("/")
    for rel in (f"{p}/sbin/slurmgate", f"{p}/share/man/man8/slurmgate.8",
                f"{p}/share/man/man5/slurmgate.json.5", f"{p}/share/slurmgate/slurmgate-agent",
                f"{unitdir}/slurmgate.service",
                "etc/slurmgate/slurmgate.json"):
        assert (tmp_path / rel).is_file(), rel
    unit = (tmp_path / unitdir / "slurmgate.service").read_text()
    assert f"ExecStart={prefix}/sbin/slurmgate -c /etc/slurmgate/slurmgate.json" in unit


def test_fragment_keeps_the_default_goal(tmp_path):
    """Included before any rule of the top Makefile, mk/install.mk must not
    make `install` the default goal."""
    mf = tmp_path / "Makefile"
    mf.write_text(f"include {REPO}/mk/install.mk\nall:\n\t@echo default goal is all\n")
    r = subprocess.run(["make", "--no-print-directory", "-f", str(mf)], cwd=str(tmp_path),
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=30, env=make_env())
    assert r.returncode == 0 and r.stdout.strip() == "default goal is all", r.stdout
