"""Issue 12: a Grafana dashboard in dist/, built on the /metrics names.

The dashboard is parsed, and every metric (and every label it selects or
groups by) is checked against the /metrics output of a real gateway that has
served, cold-started, and refused requests for a failed service."""
import json
import re

from conftest import REPO, demo_service, write_script
from test_metrics import parse_metrics

DASHBOARD = REPO / "dist" / "grafana-dashboard.json"
METRIC = re.compile(r"\b(slurmgate_[a-zA-Z0-9_]+)\b")
SELECTOR = re.compile(r"\b(slurmgate_[a-zA-Z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')
BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def expressions(dash):
    """Every PromQL expression in the dashboard: panel targets and variables."""
    out = []
    for p in all_panels(dash["panels"]):
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    for v in dash["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") == "query" and q:
            out.append((f"variable {v['name']}", q))
    return out


def test_dashboard_is_valid_grafana_json():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and dash["uid"] and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in all_panels(dash["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in all_panels(dash["panels"]):
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"], f"panel {p['title']} has no query"
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
    assert any(v["name"] == "service" for v in dash["templating"]["list"])


def test_every_metric_in_the_dashboard_exists_in_a_gateways_metrics(gateway, tmp_path):
    fails = write_script(tmp_path / "fails.sh", "#!/bin/sh\necho 'no weights' >&2\nexit 3\n")
    g = gateway([demo_service(), demo_service(name="broken", route="broken", bash_file=str(fails))])
    assert g.get("/llm/health").status == 200      # a cold start, an instance, a ttfb
    assert g.get("/broken/x").status == 502         # a failed start, a refusal
    fams = parse_metrics(g.get("/metrics").text)

    samples = {}   # sample name -> set of label names seen on it
    for f in fams.values():
        for sname, labels, _ in f.samples:
            samples.setdefault(sname, set()).update(labels)

    exprs = expressions(json.loads(DASHBOARD.read_text()))
    assert len(exprs) >= 15, exprs
    used = set()
    for where, e in exprs:
        names = set(METRIC.findall(e))
        assert names, f"{where}: no slurmgate metric in {e}"
        used |= names
        for n in names:
            assert n in samples, f"{where}: {n} is not in /metrics (has: {sorted(samples)})"
        for n, matchers in SELECTOR.findall(e):
            for label in MATCHER.findall(matchers):
                assert label in samples[n], f"{where}: {n} has no label {label!r}"
        for group in BY.findall(e):
            for label in (x.strip() for x in group.split(",") if x.strip()):
                assert any(label in samples[n] for n in names), \
                    f"{where}: no metric of {e} has the label {label!r}"
    # and the dashboard shows what the issue asks for: refusals among them
    for must in ("slurmgate_requests_total", "slurmgate_requests_refused_total",
                 "slurmgate_cold_start_seconds_bucket", "slurmgate_instances",
                 "slurmgate_start_failures_total", "slurmgate_time_to_first_byte_seconds_bucket"):
        assert must in used, must
