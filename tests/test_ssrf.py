"""The URL guard refuses every way of pointing the service at an internal address."""

from __future__ import annotations

import socket

import pytest

from app.clients.ssrf import Allowlist, UnsafeURL, check_url

ALLOWED = Allowlist.parse(["images.example", ".ai.example", "203.0.113.0/24"])


def fake_dns(table: dict[str, str]):
    """A resolver answering from a table, falling back to the system for IP literals."""

    def resolve(host, port, type=0):  # noqa: A002 - the name getaddrinfo uses
        address = table.get(host)
        if address is None:
            return socket.getaddrinfo(host, port, type=type)
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

    return resolve


DNS = fake_dns(
    {
        "images.example": "198.51.100.10",
        "gpu.ai.example": "198.51.100.11",
        "sneaky.ai.example": "127.0.0.1",
        "meta.ai.example": "169.254.169.254",
        "elsewhere.example": "198.51.100.12",
    }
)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/",
        "http://[::1]:5432",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://169.254.169.254/latest/meta-data/",
        "http://allowed.example@127.0.0.1/",
        "http://images.example@127.0.0.1/",
        "file:///etc/passwd",
        "gopher://images.example:70/_x",
        "ftp://images.example/",
        "http://sneaky.ai.example/",
        "http://meta.ai.example/",
        "http://elsewhere.example/",
        "http:///nohost",
    ],
)
def test_unsafe_urls_are_refused(url):
    with pytest.raises(UnsafeURL):
        check_url(url, ALLOWED, resolve=DNS)


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://images.example/generate", "198.51.100.10"),
        ("https://gpu.ai.example:8443/x", "198.51.100.11"),
        ("http://203.0.113.5/", "203.0.113.5"),
    ],
)
def test_allowlisted_urls_pass_with_the_address_to_connect_to(url, address):
    assert [str(a) for a in check_url(url, ALLOWED, resolve=DNS)] == [address]


def test_loopback_passes_only_when_the_allowlist_names_it():
    url = "http://127.0.0.1:8080/"
    with pytest.raises(UnsafeURL):
        check_url(url, Allowlist.parse(["localhost"]), resolve=DNS)
    assert check_url(url, Allowlist.parse(["127.0.0.1"]), resolve=DNS)


# ---- through the registry: registration and call time --------------------------------------


def _listener():
    """A TCP socket the test owns: any connection the service makes to it is seen."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    # A connection the service made is in the accept queue before its connect() returned, so
    # counting needs no waiting: an empty queue answers at once.
    server.setblocking(False)
    return server


def _connections(server) -> int:
    seen = 0
    while True:
        try:
            connection, _ = server.accept()
        except OSError:
            return seen
        seen += 1
        connection.close()


@pytest.fixture()
def strict_app(app, test_env):
    """An app on the (emptied) database whose allowlist names only a host that is not loopback."""
    import os

    from app import create_app
    from app.config import Settings

    env = {**os.environ, **test_env, "URL_ALLOWLIST": "images.example"}
    return create_app(Settings.from_env(env))


@pytest.mark.parametrize(
    "template",
    [
        "http://127.0.0.1:{port}/",
        "http://[::1]:{port}",
        "http://2130706433:{port}/",
        "http://0x7f000001:{port}/",
        "http://images.example@127.0.0.1:{port}/",
        "http://localhost:{port}/",
        "file:///etc/passwd",
        "gopher://127.0.0.1:{port}/_x",
    ],
)
def test_registering_an_internal_url_is_refused_and_nothing_connects(strict_app, template):
    listener = _listener()
    try:
        port = listener.getsockname()[1]
        client = strict_app.test_client()
        with strict_app.app_context():
            response = client.put("/services/image", json={"urls": [template.format(port=port)]})
            assert response.status_code == 422, response.get_data(as_text=True)
            assert "urls" in response.get_data(as_text=True)
            services = client.get("/services/image").get_json()
        assert template.format(port=port) not in services["urls"]
        assert _connections(listener) == 0
    finally:
        listener.close()


def test_a_url_that_became_unsafe_is_refused_at_call_time(strict_app):
    """A row written before the allowlist changed is checked again before each call."""
    from sqlalchemy import text

    from app.extensions import db
    from app.services import registry

    listener = _listener()
    try:
        port = listener.getsockname()[1]
        with strict_app.app_context():
            registry.list_services()  # seeds the rows
            db.session.execute(
                text("UPDATE services SET urls = ARRAY[:url], source = 'api' WHERE name = 'image'"),
                {"url": f"http://127.0.0.1:{port}"},
            )
            db.session.commit()
            with pytest.raises(Exception) as refused:
                registry.call("image_generation", {"params": {}}, retries=0)
            assert "may not be called" in str(refused.value)
        assert _connections(listener) == 0
    finally:
        listener.close()


def test_a_redirect_to_loopback_is_not_followed(fake_service):
    from app.clients.downstream import DownstreamError, post
    from tests.fake_services import Scripted

    listener = _listener()
    try:
        port = listener.getsockname()[1]
        redirecting = fake_service(
            default=Scripted(status=302, body="", headers={"Location": f"http://127.0.0.1:{port}/"})
        )
        with pytest.raises(DownstreamError):
            post(redirecting.url, "/generate", {}, timeout=2)
        assert _connections(listener) == 0
    finally:
        listener.close()


def test_a_name_resolving_to_loopback_is_refused():
    with pytest.raises(UnsafeURL, match="internal address"):
        check_url("http://sneaky.ai.example/", ALLOWED, resolve=DNS)
