"""A stream in flight on a Slurm job that ends under it (its time limit, an
admin's scancel): the reason the client, the log and /api give is the
job's end as Slurm says it, not "upstream closed the connection" (which is
what the gateway sees first: the service dies before squeue says why).
The cut stream still ends as an error for a real client (the openai npm
package throws), never as a normal end."""
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import conftest as base
from conftest import SLACK, wait_until
from slurmlib import (cluster, demo_job_script, linger_lines, slurm_gateway,  # noqa: F401
                      slurm_service)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jsclient import run_js  # noqa: E402

STREAM_JS = """
const s = await client.chat.completions.create({model: 'demo', stream: true, max_tokens: 100000,
                                                messages: [{role: 'user', content: 'hi'}]});
let n = 0;
for await (const c of s) n++;
return {ended_normally: true, chunks: n};
"""


def streaming_service(cluster, tmp_path, minutes=None):
    """The demo service streaming a token every 200 ms; with MINUTES, a job
    of that time limit whose walltime handover never comes first
    (handover_lead 0: at the limit itself)."""
    extra = "export DEMO_TOKEN_DELAY_MS=200\n"
    kw = {}
    if minutes:
        extra = f"#SBATCH --time={minutes}\n" + extra
        kw = dict(remote_port=base.free_port_block(2), handover_lead=0)
    job = demo_job_script(tmp_path / "job.sh", extra=extra)
    return slurm_service(cluster, job, max_instances=1, timeout=300, **kw)


def stream_cut(g, cluster, end_job, timeout):
    """Run a long stream with the openai client, END_JOB(job_id) once it
    flows; returns (what the client said, the job id)."""
    assert g.get("/llm/health", timeout=60).status == 200
    [inst] = g.svc()["instances"]
    job_id = inst["job_id"]
    with ThreadPoolExecutor(max_workers=1) as ex:
        fut = ex.submit(run_js, g, STREAM_JS, None, timeout)
        wait_until(lambda: g.svc()["in_flight"] == 1, 15 * SLACK, msg="the stream to flow")
        end_job(job_id)
        out = fut.result(timeout=timeout * SLACK + 20)
    return out, job_id


def check_reason(g, out, job_id, state):
    want = f"Slurm job {job_id} ended: {state}"
    log = g.log(tail=10 ** 7)
    print(f"the client: {out}")
    # the client: an error (not a normal end), with the reason
    assert "thrown" in out, (out, log)
    assert want in out["thrown"]["message"], (out, log)
    # the gateway's log line for the failed request, and /api
    assert any(want in line and " 502 " in line for line in log.splitlines()), log
    assert not any("upstream closed the connection" in line and " 502 " in line
                   for line in log.splitlines()), log
    wait_until(lambda: want in (g.svc()["last_error"] or ""), 10 * SLACK,
               msg=f"/api last_error naming {want}")


def test_stream_cut_by_an_admins_scancel_says_the_job_was_cancelled(cluster, slurm_gateway,
                                                                   tmp_path):
    g = slurm_gateway([streaming_service(cluster, tmp_path)])
    out, job_id = stream_cut(g, cluster, cluster.scancel, 30)
    check_reason(g, out, job_id, "CANCELLED")


def test_stream_cut_by_the_jobs_time_limit_says_timeout(cluster, slurm_gateway, tmp_path):
    """A job of 1 minute (Slurm ends it within 30 s of that) under a stream
    that would run for hours."""
    g = slurm_gateway([streaming_service(cluster, tmp_path, minutes=1)])
    out, job_id = stream_cut(g, cluster, lambda _id: None, 120)
    check_reason(g, out, job_id, "TIMEOUT")
    assert "its time limit" in out["thrown"]["message"], out


def cut_and_waiting(cluster, slurm_gateway, tmp_path):
    """A stream on a job an admin cancels, whose job lingers COMPLETING
    (8 s): (gateway, stream) once the gateway waits for the job's fate."""
    extra = "export DEMO_TOKEN_DELAY_MS=200\n" + linger_lines(cluster, 8)
    job = demo_job_script(tmp_path / "job.sh", extra=extra)
    g = slurm_gateway([slurm_service(cluster, job, max_instances=1, timeout=300)])
    assert g.get("/llm/health", timeout=60).status == 200
    [inst] = g.svc()["instances"]
    s = base.Stream(g.port, "POST", "/v1/chat/completions",
                    {"model": "demo", "stream": True, "max_tokens": 100000,
                     "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert s.resp.status == 200, s.resp.status
    assert s.resp.readline(), "the stream to flow"
    cluster.scancel(inst["job_id"])
    wait_until(lambda: "a response was cut" in g.log(), 15 * SLACK, interval=0.1,
               msg="the gateway to see the cut")
    return g, s


def test_client_that_leaves_while_its_cut_response_waits_for_the_job(cluster, slurm_gateway,
                                                                     tmp_path):
    """The client hangs up during the wait for the job's fate: the
    exchange ends at once (its timer and instance reference with it), and
    the instance's end afterwards touches nothing freed (ASan build)."""
    g, s = cut_and_waiting(cluster, slurm_gateway, tmp_path)
    s.close()
    wait_until(lambda: g.svc()["in_flight"] == 0, 5 * SLACK, interval=0.1,
               msg="the exchange to end with its client")
    wait_until(lambda: not g.svc()["instances"], 40 * SLACK, interval=0.2,
               msg="the cancelled job's instance to be gone")
    assert g.get("/api/health", timeout=10).status == 200


def test_gateway_stopped_while_a_cut_response_waits_for_the_job(cluster, slurm_gateway,
                                                                tmp_path):
    """SIGTERM during the wait for the job's fate: the gateway still exits
    0 (the teardown checks it: a sanitizer report makes it non-zero), and
    the client's stream ends."""
    g, s = cut_and_waiting(cluster, slurm_gateway, tmp_path)
    assert g.terminate() == 0, g.log()
    s.read_all(30)
