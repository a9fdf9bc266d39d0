"""A failed Slurm job's reason quotes the end of its output file ("Slurm
job 12 ended: FAILED NonZeroExitCode; its output ends: ..."). With an
admin token set that output is for the token's holder, as the logs are;
everyone else reads the reason with a pointer to the logs
(test_public_surface.py has the local launcher's side)."""
from conftest import http_request  # noqa: F401
from slurmlib import cluster, slurm_gateway, slurm_service, write_script  # noqa: F401

SECRET = "hf_FAKE_slurm_s3cr3t_0123456789"
ADMIN = "admin-token-slurm-0123456789"
POINTER = "/api/services/demo/logs"


def test_failed_job_output_is_not_shown_without_the_admin_token(cluster, slurm_gateway, tmp_path):
    job = write_script(tmp_path / "leaky.sh", "#!/bin/sh\necho 'loading model'\n"
                       f"echo 'env: HF_TOKEN={SECRET}' >&2\nexit 1\n")
    g = slurm_gateway([slurm_service(cluster, job)], admin_token=ADMIN)
    r = g.get("/llm/x", timeout=60)
    assert r.status == 502, r
    err = r.json()["error"]
    assert "FAILED" in err and POINTER in err, err
    assert SECRET not in r.text, r
    for path in ("/info", "/api/services", "/api/services/demo", "/check_llm"):
        r = g.get(path)
        assert r.status == 200 and SECRET not in r.text, (path, r.text[:2000])
    assert "FAILED" in g.svc()["last_error"]
    # the admin token's holder reads it, in the state as in the logs
    admin = {"Authorization": f"Bearer {ADMIN}"}
    info = g.get("/api/services/demo", headers=admin).json()
    assert "its output ends: " in info["last_error"] and SECRET in info["last_error"], info
