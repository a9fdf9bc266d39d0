"""The seed's endpoints keep working: /info, /check_<route>, /demand_<route>,
the service-management switches, and the seed's services_config.json."""
import json
import time

from conftest import (SLACK, Gateway, demo_service, run_check, seed_config_dict, service_gone,
                      wait_until)


def test_info_lists_every_service(gateway):
    g = gateway([demo_service(), demo_service(name="other", route="tr")])
    r = g.get("/info")
    assert r.status == 200, r
    assert r.header("Content-Type", "").startswith("application/json")
    info = r.json()
    assert info["service_management"] is True
    names = [s["Name"] for s in info["services"]]
    assert names == ["demo", "other"], info
    for s in info["services"]:
        assert s["started"] is False and s["running"] is False, s


def test_check_reports_started_running_and_reason(gateway):
    g = gateway(env={"DEMO_DELAY": "1"})
    r = g.get("/check_llm")
    assert r.status == 200, r
    chk = r.json()
    assert set(chk) == {"Name", "started", "running", "reason"}, chk
    assert chk["Name"] == "demo"
    assert chk["started"] is False and chk["running"] is False
    assert isinstance(chk["reason"], str) and chk["reason"]

    # while starting: started but not running
    assert g.get("/demand_llm").status == 503
    chk = g.get("/check_llm").json()
    assert chk["started"] is True and chk["running"] is False, chk

    wait_until(lambda: g.get("/check_llm").json()["running"], 10 * SLACK)
    chk = g.get("/check_llm").json()
    assert chk["started"] is True and chk["running"] is True, chk
    g.record_pids()


def test_check_does_not_start_the_service(gateway):
    g = gateway()
    for _ in range(3):
        assert g.get("/check_llm").status == 200
    time.sleep(0.2)
    assert g.svc()["starts"] == 0
    assert g.state() == "stopped"


def test_check_and_demand_of_unknown_route_is_404(gateway):
    g = gateway()
    for path in ("/check_nope", "/demand_nope"):
        r = g.get(path)
        assert r.status == 404, (path, r)
        assert "error" in r.json()


def test_demand_starts_the_service_503_until_ready_then_200(gateway):
    g = gateway(env={"DEMO_DELAY": "1"})
    r = g.get("/demand_llm")
    assert r.status == 503, r
    assert r.header("Retry-After") is not None, dict(r.headers)
    body = r.json()
    assert body["Name"] == "demo" and body["started"] is True and body["running"] is False, body

    r = wait_until(lambda: (lambda x: x if x.status == 200 else None)(g.get("/demand_llm")),
                   10 * SLACK, interval=0.2, msg="/demand_llm 200")
    assert r.json()["running"] is True
    info = g.svc()
    assert info["starts"] == 1, f"repeated /demand_ must not start it again: {info}"


def test_disable_service_management_refuses_starts_but_keeps_running_services(gateway):
    g = gateway([demo_service(), demo_service(name="other", route="tr")])
    pid = g.service_pid("llm")

    r = g.get("/disable_service_management")
    assert r.status == 200, r
    assert r.json()["service_management"] is False
    assert g.get("/info").json()["service_management"] is False

    # a running service keeps serving
    assert g.service_pid("llm") == pid
    # a stopped one is not started
    r = g.get("/tr/health")
    assert r.status == 503, r
    assert "management is disabled" in r.json()["error"], r
    assert r.header("Retry-After") is not None
    assert g.svc("other")["starts"] == 0
    assert "disabled" in g.get("/check_tr").json()["reason"]

    r = g.get("/enable_service_management")
    assert r.status == 200, r
    assert r.json()["service_management"] is True
    r = g.get("/tr/health")
    assert r.status == 200, r
    assert g.svc("other")["starts"] == 1


def test_kill_disable_service_management_stops_everything_and_disables(gateway):
    svc = demo_service(stop_grace=2)
    g = gateway([svc, demo_service(name="other", route="tr")])
    pid = g.service_pid("llm")

    r = g.get("/kill_disable_service_management")
    assert r.status == 200, r
    body = r.json()
    assert body["service_management"] is False, body
    assert body["stopped"] == ["demo"], body

    wait_until(lambda: service_gone(pid, svc["local_port"]), (2 + 3) * SLACK,
               msg=f"service pid {pid} gone after kill_disable")
    g.wait_state("stopped", timeout=5)
    r = g.get("/llm/health")
    assert r.status == 503, r
    assert "management is disabled" in r.json()["error"]
    assert g.svc()["starts"] == 1

    assert g.get("/enable_service_management").status == 200
    r = g.get("/llm/pid")
    assert r.status == 200, r
    assert r.json()["pid"] != pid
    g.seen_pids.add(r.json()["pid"])


def test_seed_sample_config_passes_the_config_check(tmp_path):
    # its ssh key is not on this machine: -t names that, and nothing else
    seed = seed_config_dict()
    cfg = tmp_path / "services_config.json"
    cfg.write_text(json.dumps(seed, indent=4))
    p = run_check(cfg)
    assert p.returncode == 1, f"rc={p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    lines = p.stderr.splitlines()
    assert len(lines) == len(seed["Services"]), p.stderr
    assert all(".ssh_key_file: " in ln and "No such file" in ln for ln in lines), p.stderr
    # with the key in place the seed's file passes as it is
    key = tmp_path / "key"
    key.write_text("not a real key\n")
    key.chmod(0o600)
    for s in seed["Services"]:
        s["ssh_key_file"] = str(key)
    cfg.write_text(json.dumps(seed, indent=4))
    p = run_check(cfg)
    assert p.returncode == 0, f"rc={p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"


def test_gateway_runs_with_the_seed_sample_config(tmp_path):
    cfg = seed_config_dict()
    g = Gateway(tmp_path, cfg["Services"], name="seed",
                **{k: v for k, v in cfg.items() if k != "Services"})
    try:
        g.start()
        info = g.get("/info").json()
        assert [s["Name"] for s in info["services"]] == ["LLM-Vicuna-13b", "translation_service"]
        for route, name in (("llm_service", "LLM-Vicuna-13b"),
                            ("translation_service", "translation_service")):
            chk = g.get(f"/check_{route}").json()
            assert chk["Name"] == name and chk["started"] is False and chk["running"] is False, chk
        api = g.get("/api/services/LLM-Vicuna-13b").json()
        assert api["launcher"] == "slurm", api
        assert api["timeout"] == 120
    finally:
        g.close()
