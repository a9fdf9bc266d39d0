"""Real JavaScript clients against a gateway: the official `openai` package
and `@huggingface/inference`, from tests/js/node_modules (installed by
`make test-deps`: npm ci in tests/js).

run_js(g, body) runs BODY as the inside of an async function in an ES module
with `client` (an OpenAI client at the gateway's /v1, no retries) and `hf`
(@huggingface/inference's InferenceClient) in scope; what it returns is
printed as JSON and returned. A thrown error comes back as
{"thrown": {"name", "status", "message", "type", "code", "error"}}."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import SLACK

JS = Path(__file__).resolve().parents[1] / "js"

PRELUDE = """
import OpenAI from 'openai';
import { InferenceClient } from '@huggingface/inference';
import fs from 'node:fs';
const base = process.env.SG_BASE;
const client = new OpenAI({ baseURL: base + '/v1', apiKey: process.env.SG_KEY || 'sk-none',
                            maxRetries: 0, timeout: Number(process.env.SG_TIMEOUT_MS) });
const hf = new InferenceClient(process.env.SG_KEY || undefined, { endpointUrl: base });
let out;
try {
  out = await (async () => { %s })();
} catch (e) {
  out = { thrown: { name: e?.constructor?.name, status: e?.status ?? null, message: String(e?.message),
                    type: e?.type ?? null, code: e?.code ?? null, error: e?.error ?? null } };
}
process.stdout.write(JSON.stringify(out === undefined ? null : out) + '\\n');
"""


def run_js(g, body, key=None, timeout=30.0):
    if not (JS / "node_modules" / "openai").is_dir():
        pytest.fail("tests/js/node_modules is missing: run `make test-deps` (npm ci in tests/js)")
    env = dict(os.environ, SG_BASE=f"http://127.0.0.1:{g.port}",
               SG_TIMEOUT_MS=str(int(timeout * SLACK * 1000)))
    if key:
        env["SG_KEY"] = key
    p = subprocess.run(["node", "--input-type=module", "-e", PRELUDE % body], cwd=JS, env=env,
                       capture_output=True, text=True, timeout=timeout * SLACK + 15)
    assert p.returncode == 0, f"node failed ({p.returncode}):\n{p.stderr}"
    return json.loads(p.stdout.strip().splitlines()[-1])
