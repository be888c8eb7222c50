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
