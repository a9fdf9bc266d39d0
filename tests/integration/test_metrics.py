"""GET /metrics: the Prometheus text exposition format (0.0.4), checked by a
strict parser, and what the numbers say after known traffic."""
import math
import re
import threading
import time

from conftest import DEMO_SH, SLACK, demo_service, http_request, wait_until, write_script

# --------------------------------------------------------------------------
# a strict parser / validator of the text format
# --------------------------------------------------------------------------

METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
FLOAT = r"[+-]?(?:Inf|NaN|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
SAMPLE_RE = re.compile(
    rf"^(?P<name>{METRIC_NAME})"
    rf"(?:\{{(?P<labels>(?:{LABEL_NAME}={LABEL_VALUE})(?:,{LABEL_NAME}={LABEL_VALUE})*,?)?\}})?"
    rf" (?P<value>{FLOAT})(?: (?P<ts>-?\d+))?$")
LABEL_RE = re.compile(rf"({LABEL_NAME})=({LABEL_VALUE})")
HELP_RE = re.compile(rf"^# HELP (?P<name>{METRIC_NAME}) (?P<doc>.*)$")
TYPE_RE = re.compile(rf"^# TYPE (?P<name>{METRIC_NAME}) (?P<type>counter|gauge|histogram|summary|untyped)$")


def unescape_label(v):
    out, k = [], 1
    while k < len(v) - 1:
        c = v[k]
        if c == "\\":
            n = v[k + 1]
            out.append({"\\": "\\", '"': '"', "n": "\n"}[n])
            k += 2
        else:
            out.append(c)
            k += 1
    return "".join(out)


def parse_float(s):
    if s in ("+Inf", "Inf"):
        return math.inf
    if s == "-Inf":
        return -math.inf
    return float(s)


class Family:
    def __init__(self, name):
        self.name = name
        self.help = None
        self.type = None
        self.samples = []   # (sample name, labels dict, value)


def parse_metrics(text):
    """Parse and validate; return {family name: Family}. Raises AssertionError
    naming the first offending line."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    fams = {}
    order = []
    current = None          # the family whose samples we are in
    series = set()
    for no, line in enumerate(text.split("\n")[:-1], 1):
        where = f"line {no}: {line!r}"
        assert line == line.strip() or line.startswith("# HELP"), f"stray whitespace at {where}"
        assert line != "", f"empty line at {where}"
        if line.startswith("#"):
            m = HELP_RE.match(line) or TYPE_RE.match(line)
            assert m, f"a comment that is neither HELP nor TYPE at {where}"
            name = m.group("name")
            f = fams.get(name)
            if f is None:
                f = fams[name] = Family(name)
                order.append(name)
            assert not f.samples, f"HELP/TYPE after samples of {name} at {where}"
            if line.startswith("# HELP"):
                assert f.help is None, f"a second HELP for {name} at {where}"
                doc = m.group("doc")
                assert doc.strip(), f"empty HELP for {name}"
                assert not re.search(r"\\(?![\\n])", doc), f"bad escape in HELP at {where}"
                f.help = doc
            else:
                assert f.type is None, f"a second TYPE for {name} at {where}"
                f.type = m.group("type")
            current = f
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"not a valid sample line at {where}"
        sname = m.group("name")
        labels = {}
        if m.group("labels"):
            for ln, lv in LABEL_RE.findall(m.group("labels")):
                assert not ln.startswith("__"), f"reserved label name at {where}"
                assert ln not in labels, f"label {ln} twice at {where}"
                labels[ln] = unescape_label(lv)
        value = parse_float(m.group("value"))
        assert m.group("ts") is None, f"timestamps are not expected at {where}"
        # which family? the one declared most recently, by the type's suffix rules
        assert current is not None, f"sample before any HELP/TYPE at {where}"
        assert current.help is not None and current.type is not None, \
            f"family {current.name} needs both HELP and TYPE before its samples ({where})"
        base = current.name
        if current.type == "histogram":
            allowed = {base + "_bucket", base + "_sum", base + "_count"}
        elif current.type == "summary":
            allowed = {base, base + "_sum", base + "_count"}
        else:
            allowed = {base}
        assert sname in allowed, f"sample {sname} does not belong to family {base} ({where})"
        if sname == base + "_bucket":
            assert "le" in labels, f"bucket without le at {where}"
        else:
            assert "le" not in labels or current.type != "histogram", f"le outside a bucket at {where}"
        key = (sname, tuple(sorted(labels.items())))
        assert key not in series, f"duplicate series at {where}"
        series.add(key)
        current.samples.append((sname, labels, value))
    for name in order:
        f = fams[name]
        assert f.help is not None and f.type is not None, f"family {name} lacks HELP or TYPE"
        check_family(f)
    return fams


def check_family(f):
    n = f.name
    # naming conventions
    assert n.startswith("slurmgate_"), f"{n}: no slurmgate_ prefix"
    assert re.fullmatch(r"[a-z0-9_]+", n), f"{n}: use lower snake case"
    for bad in ("_ms", "_msec", "millisecond", "microsecond", "_minutes", "_hours", "_us_"):
        assert bad not in n, f"{n}: use base units (seconds)"
    if "second" in n:
        assert n.endswith("_seconds") or n.endswith("_seconds_total"), f"{n}: seconds is the unit suffix"
    if f.type == "counter":
        assert n.endswith("_total"), f"counter {n} must end in _total"
        for s, labels, v in f.samples:
            assert v >= 0 and not math.isnan(v), f"{s}{labels}: negative counter"
    else:
        assert not n.endswith("_total"), f"{f.type} {n} must not end in _total"
    for suffix in ("_bucket", "_count", "_sum"):
        assert not n.endswith(suffix), f"{n}: a family name must not end in {suffix}"
    if f.type == "histogram":
        check_histogram(f)
    for s, labels, v in f.samples:
        for k, val in labels.items():
            val.encode("utf-8")


def check_histogram(f):
    groups = {}
    for s, labels, v in f.samples:
        rest = tuple(sorted((k, x) for k, x in labels.items() if k != "le"))
        g = groups.setdefault(rest, {"buckets": [], "sum": [], "count": []})
        if s.endswith("_bucket"):
            g["buckets"].append((labels["le"], v))
        elif s.endswith("_sum"):
            g["sum"].append(v)
        else:
            g["count"].append(v)
    for rest, g in groups.items():
        where = f"{f.name}{dict(rest)}"
        assert len(g["sum"]) == 1 and len(g["count"]) == 1, f"{where}: needs one _sum and one _count"
        b = g["buckets"]
        assert b, f"{where}: no buckets"
        les = [parse_float(le) for le, _ in b]
        assert all(a < c for a, c in zip(les, les[1:])), f"{where}: le not increasing: {les}"
        assert b[-1][0] == "+Inf", f"{where}: the last bucket must be le=\"+Inf\""
        counts = [v for _, v in b]
        assert all(v == int(v) and v >= 0 for v in counts), f"{where}: bucket counts {counts}"
        assert all(a <= c for a, c in zip(counts, counts[1:])), f"{where}: not cumulative: {counts}"
        assert counts[-1] == g["count"][0], f"{where}: +Inf bucket {counts[-1]} != _count {g['count'][0]}"
        assert g["sum"][0] >= 0, f"{where}: negative _sum"
        if g["count"][0] == 0:
            assert g["sum"][0] == 0, f"{where}: a _sum without observations"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def scrape(g):
    r = g.get("/metrics")
    assert r.status == 200, r
    ct = r.header("Content-Type", "")
    assert ct.startswith("text/plain"), ct
    assert "version=0.0.4" in ct, ct
    return parse_metrics(r.text)


def value(fams, family, sample=None, **labels):
    """The value of the one sample of FAMILY (sample name SAMPLE) whose labels
    include LABELS; None if there is none."""
    f = fams.get(family)
    assert f is not None, f"no family {family}"
    sample = sample or family
    hits = [v for s, l, v in f.samples
            if s == sample and all(l.get(k) == str(x) for k, x in labels.items())]
    assert len(hits) <= 1, f"{sample}{labels} matches {len(hits)} series"
    return hits[0] if hits else None


def hvalue(fams, family, part, **labels):
    return value(fams, family, f"{family}_{part}", **labels)


def bucket(fams, family, le, **labels):
    return value(fams, family, f"{family}_bucket", le=le, **labels)


def slow_script(tmp_path, delay, name="slow.sh"):
    return write_script(tmp_path / name, f'#!/bin/sh\nDEMO_DELAY={delay} exec "{DEMO_SH}" "$@"\n')


# --------------------------------------------------------------------------
# the validator itself
# --------------------------------------------------------------------------

def test_the_validator_rejects_what_it_should():
    good = ('# HELP slurmgate_x_total X.\n# TYPE slurmgate_x_total counter\n'
            'slurmgate_x_total{a="b\\"c"} 1\n')
    parse_metrics(good)
    bad = [
        good.replace("# HELP slurmgate_x_total X.\n", ""),                  # no HELP
        good + "slurmgate_x_total{a=\"b\\\"c\"} 2\n",                         # duplicate series
        good.replace("counter", "gauge"),                                    # gauge named _total
        good.replace("} 1", "} one"),                                        # bad value
        good.replace('a="b\\"c"', 'a="b"c"'),                               # bad escaping
        good.replace("slurmgate_x_total", "x_total"),                        # no prefix
        good + "# HELP slurmgate_x_total again\n",                          # HELP after samples
        ('# HELP slurmgate_h_seconds H.\n# TYPE slurmgate_h_seconds histogram\n'
         'slurmgate_h_seconds_bucket{le="1"} 2\nslurmgate_h_seconds_bucket{le="+Inf"} 1\n'
         'slurmgate_h_seconds_sum 1\nslurmgate_h_seconds_count 1\n'),        # not cumulative
        ('# HELP slurmgate_h_seconds H.\n# TYPE slurmgate_h_seconds histogram\n'
         'slurmgate_h_seconds_bucket{le="1"} 1\n'
         'slurmgate_h_seconds_sum 1\nslurmgate_h_seconds_count 1\n'),        # no +Inf
        ('# HELP slurmgate_h_seconds H.\n# TYPE slurmgate_h_seconds histogram\n'
         'slurmgate_h_seconds_bucket{le="+Inf"} 2\n'
         'slurmgate_h_seconds_sum 1\nslurmgate_h_seconds_count 1\n'),        # +Inf != count
        ('# HELP slurmgate_t_ms T.\n# TYPE slurmgate_t_ms gauge\nslurmgate_t_ms 1\n'),  # unit
    ]
    for text in bad:
        try:
            parse_metrics(text)
        except (AssertionError, KeyError):
            continue
        raise AssertionError(f"the validator accepted:\n{text}")


# --------------------------------------------------------------------------
# format
# --------------------------------------------------------------------------

def test_exposition_is_valid_fresh_and_after_mixed_traffic(gateway, tmp_path):
    bad = write_script(tmp_path / "bad.sh", '#!/bin/sh\necho "boom" >&2\nexit 3\n')
    g = gateway([demo_service(name="demo", route="llm"),
                 demo_service(name="broken", route="broken", bash_file=str(bad))],
                env={"DEMO_TOKEN_DELAY_MS": "10"})
    fams = scrape(g)
    for fam in ("slurmgate_requests_total", "slurmgate_requests_in_flight",
                "slurmgate_requests_waiting", "slurmgate_cold_starts_total",
                "slurmgate_cold_start_seconds", "slurmgate_start_failures_total",
                "slurmgate_instances", "slurmgate_instance_seconds_total",
                "slurmgate_time_to_first_byte_seconds"):
        assert fam in fams, f"missing family {fam}: {sorted(fams)}"
    assert fams["slurmgate_cold_start_seconds"].type == "histogram"
    assert fams["slurmgate_time_to_first_byte_seconds"].type == "histogram"
    assert fams["slurmgate_requests_total"].type == "counter"
    assert fams["slurmgate_requests_in_flight"].type == "gauge"
    assert fams["slurmgate_requests_waiting"].type == "gauge"
    assert fams["slurmgate_instances"].type == "gauge"

    assert g.get("/llm/health").status == 200
    assert g.get("/llm/nope").status == 404
    assert g.get("/llm/stream?n=3&ms=10").status == 200
    assert g.post("/v1/chat/completions", {"model": "demo", "stream": True}).status == 200
    assert g.get("/broken/x").status == 502
    assert g.get("/nothing-here").status == 404
    scrape(g)
    assert g.get("/disable_service_management").status == 200
    fams = scrape(g)
    assert value(fams, "slurmgate_service_management_enabled") == 0


def test_label_values_are_escaped(gateway):
    name = 'de"mo\\x'
    g = gateway([demo_service(name=name, route="llm")])
    assert g.get("/llm/health").status == 200
    fams = scrape(g)
    assert value(fams, "slurmgate_requests_total", service=name, code=200) == 1
    assert value(fams, "slurmgate_cold_starts_total", service=name) == 1


def test_long_service_names_are_not_cut_in_labels(gateway):
    long_a = "svc-" + "x" * 300 + "-a"
    long_b = "svc-" + "x" * 300 + "-b"
    g = gateway([demo_service(name=long_a, route="a"), demo_service(name=long_b, route="b")])
    fams = scrape(g)     # the two names must not collapse into duplicate series
    assert value(fams, "slurmgate_requests_waiting", service=long_a) == 0
    assert value(fams, "slurmgate_requests_waiting", service=long_b) == 0


# --------------------------------------------------------------------------
# behaviour
# --------------------------------------------------------------------------

def test_requests_total_counts_every_answered_request(gateway):
    g = gateway()
    fams = scrape(g)
    assert value(fams, "slurmgate_requests_total", service="demo", code=200) is None
    n = 7
    for k in range(n):          # the first is a cold start
        assert g.get(f"/llm/health?k={k}").status == 200
    assert g.get("/llm/not-there").status == 404
    assert g.post("/v1/completions", {"model": "demo", "prompt": "x"}).status == 200
    fams = scrape(g)
    assert value(fams, "slurmgate_requests_total", service="demo", code=200) == n + 1
    assert value(fams, "slurmgate_requests_total", service="demo", code=404) == 1
    assert value(fams, "slurmgate_time_to_first_byte_seconds", "slurmgate_time_to_first_byte_seconds_count",
                 service="demo") == n + 2


def test_gateway_errors_for_a_service_are_counted_too(gateway):
    g = gateway(env={"DEMO_FAIL_EXIT": "3"})
    assert g.get("/llm/x").status == 502   # a failed start
    fams = scrape(g)
    assert value(fams, "slurmgate_requests_total", service="demo", code=502) == 1
    assert value(fams, "slurmgate_requests_total", service="demo", code=200) is None


def test_waiting_and_in_flight_gauges(gateway):
    g = gateway(env={"DEMO_DELAY": "2"})
    results = []

    def get(path):
        results.append(http_request(g.port, "GET", path, timeout=20 * SLACK).status)

    held = [threading.Thread(target=get, args=(f"/llm/health?k={k}",), daemon=True) for k in range(3)]
    for t in held:
        t.start()

    def waiting3():
        f = scrape(g)
        return f if value(f, "slurmgate_requests_waiting", service="demo") == 3 else None
    fams = wait_until(waiting3, 2 * SLACK, interval=0.05, msg="requests_waiting == 3")
    assert value(fams, "slurmgate_requests_in_flight", service="demo") == 0
    starting = (value(fams, "slurmgate_instances", service="demo", state="starting")
                + value(fams, "slurmgate_instances", service="demo", state="probing"))
    assert starting == 1, fams["slurmgate_instances"].samples
    assert value(fams, "slurmgate_instances", service="demo", state="ready") == 0
    for t in held:
        t.join(20 * SLACK)
    assert results == [200, 200, 200]
    fams = scrape(g)
    assert value(fams, "slurmgate_requests_waiting", service="demo") == 0

    slow = [threading.Thread(target=get, args=("/llm/slow?ms=1500",), daemon=True) for _ in range(2)]
    for t in slow:
        t.start()

    def inflight2():
        f = scrape(g)
        return f if value(f, "slurmgate_requests_in_flight", service="demo") == 2 else None
    fams = wait_until(inflight2, 2 * SLACK, interval=0.05, msg="requests_in_flight == 2")
    assert value(fams, "slurmgate_instance_requests_in_flight", service="demo", instance=0) == 2
    assert value(fams, "slurmgate_requests_waiting", service="demo") == 0
    for t in slow:
        t.join(20 * SLACK)
    fams = scrape(g)
    assert value(fams, "slurmgate_requests_in_flight", service="demo") == 0
    assert value(fams, "slurmgate_instance_requests_in_flight", service="demo", instance=0) == 0


def test_cold_start_counter_and_histogram(gateway):
    g = gateway(env={"DEMO_DELAY": "1"})
    fams = scrape(g)
    assert value(fams, "slurmgate_cold_starts_total", service="demo") == 0
    for phase in ("queue", "boot"):
        assert hvalue(fams, "slurmgate_cold_start_seconds", "count", service="demo", phase=phase) == 0
    assert g.get("/llm/health", timeout=15).status == 200
    assert g.get("/llm/health").status == 200       # warm: not a cold start
    fams = scrape(g)
    assert value(fams, "slurmgate_cold_starts_total", service="demo") == 1
    for phase in ("queue", "boot"):
        assert hvalue(fams, "slurmgate_cold_start_seconds", "count", service="demo", phase=phase) == 1
    boot = hvalue(fams, "slurmgate_cold_start_seconds", "sum", service="demo", phase="boot")
    queue = hvalue(fams, "slurmgate_cold_start_seconds", "sum", service="demo", phase="queue")
    # a local process: no queue; the 1 s model loading is boot time
    assert 0.8 <= boot <= 5 * SLACK, boot
    assert 0 <= queue < 0.5, queue
    assert bucket(fams, "slurmgate_cold_start_seconds", "0.5", service="demo", phase="boot") == 0
    assert bucket(fams, "slurmgate_cold_start_seconds", "+Inf", service="demo", phase="boot") == 1
    assert bucket(fams, "slurmgate_cold_start_seconds", "0.5", service="demo", phase="queue") == 1


def test_start_failures_by_reason(gateway, tmp_path):
    bad = write_script(tmp_path / "bad.sh", '#!/bin/sh\necho "boom" >&2\nexit 3\n')
    slow = slow_script(tmp_path, 20)
    g = gateway([demo_service(name="exits", route="exits", bash_file=str(bad)),
                 demo_service(name="hangs", route="hangs", bash_file=str(slow), start_timeout=1)])
    fams = scrape(g)
    reasons = {l["reason"] for s, l, v in fams["slurmgate_start_failures_total"].samples
               if l["service"] == "exits"}
    assert {"script_exited", "start_timeout"} <= reasons, reasons
    assert all(v == 0 for s, l, v in fams["slurmgate_start_failures_total"].samples)

    assert g.get("/exits/x").status == 502
    assert g.get("/hangs/x", timeout=15).status == 502
    fams = scrape(g)
    assert value(fams, "slurmgate_start_failures_total", service="exits", reason="script_exited") == 1
    assert value(fams, "slurmgate_start_failures_total", service="hangs", reason="start_timeout") == 1
    others = [(l, v) for s, l, v in fams["slurmgate_start_failures_total"].samples
              if v and (l["service"], l["reason"]) not in
              {("exits", "script_exited"), ("hangs", "start_timeout")}]
    assert not others, others
    assert value(fams, "slurmgate_cold_starts_total", service="exits") == 0
    assert value(fams, "slurmgate_cold_starts_total", service="hangs") == 0


def test_instances_by_state_and_instance_seconds(gateway):
    g = gateway()
    fams = scrape(g)
    states = {l["state"]: v for s, l, v in fams["slurmgate_instances"].samples if l["service"] == "demo"}
    assert states == {"starting": 0, "probing": 0, "ready": 0, "draining": 0, "stopping": 0,
                      "unhealthy": 0, "held": 0}, states
    assert value(fams, "slurmgate_instance_seconds_total", service="demo") == 0

    assert g.get("/llm/health").status == 200
    f1 = scrape(g)
    assert value(f1, "slurmgate_instances", service="demo", state="ready") == 1
    s1 = value(f1, "slurmgate_instance_seconds_total", service="demo")
    time.sleep(1.0)
    s2 = value(scrape(g), "slurmgate_instance_seconds_total", service="demo")
    assert 0.8 <= s2 - s1 <= 3 * SLACK, (s1, s2)

    assert g.post("/api/services/demo/stop").status == 202
    g.wait_state("stopped")
    f3 = scrape(g)
    assert all(v == 0 for s, l, v in f3["slurmgate_instances"].samples if l["service"] == "demo")
    s3 = value(f3, "slurmgate_instance_seconds_total", service="demo")
    assert s3 >= s2, (s2, s3)
    time.sleep(0.5)
    s4 = value(scrape(g), "slurmgate_instance_seconds_total", service="demo")
    assert s4 == s3, "instance seconds grew with no instance"


def test_time_to_first_byte_histogram(gateway):
    g = gateway()
    assert g.get("/llm/health").status == 200
    assert g.get("/llm/slow?ms=300").status == 200
    fams = scrape(g)
    fam = "slurmgate_time_to_first_byte_seconds"
    assert hvalue(fams, fam, "count", service="demo") == 2
    assert hvalue(fams, fam, "sum", service="demo") >= 0.3
    assert bucket(fams, fam, "0.25", service="demo") == 1
    assert bucket(fams, fam, "0.5", service="demo") == 2


def test_connections_gauge_and_build_info(gateway):
    g = gateway()
    fams = scrape(g)
    assert value(fams, "slurmgate_connections", side="client") >= 1
    assert fams["slurmgate_build_info"].type == "gauge"
    samples = fams["slurmgate_build_info"].samples
    assert len(samples) == 1 and samples[0][2] == 1 and samples[0][1].get("version"), samples
