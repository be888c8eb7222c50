"""API keys are read once per CACHE_SECONDS per process; a revoked key stops within that window."""

from __future__ import annotations

from sqlalchemy import text

from app.extensions import db
from app.services import keys


def bearer(plaintext: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {plaintext}"}


def test_a_key_revoked_elsewhere_works_until_the_window_ends_then_401(client, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(keys, "clock", lambda: now[0])
    _, plaintext = keys.create_key("reader", "viewer")
    assert client.get("/bots/stats", headers=bearer(plaintext)).status_code == 200
    # Revoked by another process (as `flask keys revoke` on another machine would).
    db.session.execute(text("UPDATE api_keys SET revoked_at = now() WHERE name = 'reader'"))
    db.session.commit()
    now[0] += keys.CACHE_SECONDS - 0.1
    assert client.get("/bots/stats", headers=bearer(plaintext)).status_code == 200
    now[0] += 0.2
    assert client.get("/bots/stats", headers=bearer(plaintext)).status_code == 401
    # Refused keys are not kept: it stays refused.
    assert client.get("/bots/stats", headers=bearer(plaintext)).status_code == 401


def test_a_key_revoked_in_this_process_stops_at_once(client, monkeypatch):
    monkeypatch.setattr(keys, "clock", lambda: 1000.0)  # the window never ends on its own
    _, plaintext = keys.create_key("writer", "operator")
    assert client.get("/bots/stats", headers=bearer(plaintext)).status_code == 200
    keys.revoke_key("writer")
    assert client.get("/bots/stats", headers=bearer(plaintext)).status_code == 401


def test_a_cached_key_keeps_its_role_and_tenant(client, monkeypatch):
    monkeypatch.setattr(keys, "clock", lambda: 1000.0)
    _, plaintext = keys.create_key("viewer-a", "viewer", tenant="a")
    for _ in range(2):  # read, then cached
        assert (
            client.post("/bots", json={"name": "x"}, headers=bearer(plaintext)).status_code == 403
        )
        assert client.get("/dashboard/data", headers=bearer(plaintext)).status_code == 403
        assert client.get("/bots/stats", headers=bearer(plaintext)).status_code == 200
