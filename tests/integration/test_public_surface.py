"""What a client without a token can see and try.

- A failed start's reason names the end of the job's or process's output
  ("...; its output ends: ..."), and output can hold secrets (a start
  script that echoes a token). With an admin token set, the service's logs
  need it; so does that output wherever else it shows: the state
  (/info, /check_<route>, /api/..., /api/events), the waiting page and the
  502 a failed start answers. Others read the reason with a pointer to the
  logs instead.
- Failed authentication is limited per client address (auth_fail_limit
  wrong tokens per auth_fail_window seconds), then 429 + Retry-After.
- An unnamed api key's id (access log, /metrics, /api) is keyed by a
  secret of the installation, not a plain digest anyone can test keys
  against offline."""
import hashlib
import http.client
import json
import re
import time

from conftest import (SLACK, Stream, demo_service, http_request, openai_error_body, wait_until,
                      write_script)

SECRET = "hf_FAKE_s3cr3t_0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
KEY = "sk-public-surface-0123456789"
POINTER = "/api/services/demo/logs"


def bearer(t):
    return {"Authorization": f"Bearer {t}"}


# --------------------------------------------------------------------------
# key ids
# --------------------------------------------------------------------------

def key_label(g):
    text = g.get("/metrics").text
    ids = re.findall(r'slurmgate_key_requests_total\{service="demo",key="([^"]+)"\}', text)
    assert len(ids) == 1, text
    return ids[0]


def test_unnamed_key_id_is_keyed_by_an_installation_secret(gateway, tmp_path):
    plain = hashlib.sha256(KEY.encode()).hexdigest()
    g = gateway([demo_service()], api_keys=[{"key": KEY}])
    assert g.get("/llm/health", headers=bearer(KEY)).status == 200
    kid = key_label(g)
    assert re.fullmatch(r"key:[0-9a-f]{12}", kid), kid
    assert plain[:12] not in kid and plain[:8] not in g.get("/metrics").text
    secret = tmp_path / "gw0-state" / "key_id_secret"
    assert secret.exists() and (secret.stat().st_mode & 0o777) == 0o600, secret
    # the same id after a restart (the secret is kept in state_dir)
    assert g.terminate() == 0
    g._log.close()
    g.start()
    assert g.get("/llm/health", headers=bearer(KEY)).status == 200
    assert key_label(g) == kid
    # another installation names the same key differently
    h = gateway([demo_service()], api_keys=[{"key": KEY}])
    assert h.get("/llm/health", headers=bearer(KEY)).status == 200
    assert key_label(h) != kid
