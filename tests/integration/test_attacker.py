"""Attackers against a gateway that an HPC site exposes to many users: what
the security tests elsewhere (test_access_control.py, test_security_routing.py,
test_api_keys.py, test_admin_auth.py) do not cover. Each test is named
after a hole that was found open and closed."""

from conftest import demo_service

ADMIN = "admin-secret-token-42"
KEY = "sk-attacker-test-0123456789"


def test_config_file_with_inline_secrets_readable_by_others_draws_a_warning(gateway):
    """admin_token_file and api_keys_file readable by others drew a warning,
    the config file holding the same secrets inline did not: a config left
    world-readable (umask 022, the usual) gave every local user the admin
    token and every api key, silently."""
    g = gateway([demo_service()], start=False, admin_token=ADMIN,
                api_keys=[{"key": KEY}])
    g.config_path.chmod(0o644)
    g.start()
    warned = [l for l in g.log().splitlines() if "readable by others" in l]
    assert any(str(g.config_path) in l and "admin_token" in l for l in warned), g.log()
    # a warning, not a refusal
    assert g.get("/api/services/demo", headers={"Authorization": f"Bearer {KEY}"}).status == 200

    # private, or without inline secrets: no warning
    quiet = gateway([demo_service()], start=False, admin_token=ADMIN, api_keys=[{"key": KEY}])
    quiet.config_path.chmod(0o600)
    quiet.start()
    plain = gateway([demo_service()], start=False)
    plain.config_path.chmod(0o644)
    plain.start()
    for q in (quiet, plain):
        assert "readable by others" not in q.log(), q.log()
