"""Which URLs the service may call: a guard against being pointed at internal addresses.

URLs from the environment are the operator's own and trusted. A URL registered at runtime must
use http or https, carry no credentials, and resolve only to addresses the allowlist admits;
loopback, link-local and metadata addresses are refused unless the allowlist names them.
The check runs when a URL is registered and again before each call, on the address actually
connected to, so a DNS change cannot slip past it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class UnsafeURL(ValueError):
    """The URL may not be called; the message says why."""


@dataclass(frozen=True)
class Allowlist:
    """Hosts, domain suffixes (".example.com") and networks that runtime URLs may reach."""

    hosts: frozenset[str] = frozenset()
    domains: tuple[str, ...] = ()
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: list[str]) -> Allowlist:
        """Entries: `host`, `.domain`, or a CIDR network such as `10.0.0.0/8`."""
        hosts, domains, networks = set(), [], []
        for entry in (e.strip().lower() for e in entries if e.strip()):
            if entry.startswith("."):
                domains.append(entry)
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry)
        return cls(frozenset(hosts), tuple(domains), tuple(networks))

    def names(self, host: str) -> bool:
        """Whether the host name itself is allowed."""
        host = host.lower().rstrip(".")
        return host in self.hosts or any(host.endswith(d) for d in self.domains)

    def admits(self, address: Address) -> bool:
        """Whether the address is in an allowed network."""
        return any(address in network for network in self.networks)


def _is_internal(address: Address) -> bool:
    # Link-local covers the cloud metadata address 169.254.169.254. Private networks are not
    # refused here: an allowlisted service name commonly resolves to one inside a cluster.
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return (
        address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
    )


def check_url(url: str, allowlist: Allowlist, resolve=socket.getaddrinfo) -> list[Address]:
    """Refuse an unsafe URL (raise UnsafeURL); return the addresses it may be called on."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL(f"only http and https URLs may be called, not {parts.scheme or 'none'!r}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeURL("URLs with credentials are refused")
    host = parts.hostname
    if not host:
        raise UnsafeURL("the URL has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        raise UnsafeURL(str(error)) from None
    try:
        infos = resolve(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise UnsafeURL(f"cannot resolve {host!r}: {error}") from None
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    host_allowed = allowlist.names(host)
    for address in addresses:
        if allowlist.admits(address):
            continue
        if not host_allowed:
            raise UnsafeURL(f"{host!r} is not in the allowlist of callable hosts")
        if _is_internal(address) and not allowlist.admits(address):
            raise UnsafeURL(f"{host!r} resolves to the internal address {address}")
    return addresses


def pinned(url: str, addresses: list[Address]) -> tuple[str, dict[str, str]]:
    """The URL to connect to so the checked address is the one reached, with its headers.

    Plain http is sent to the address itself with the original Host header, so a second DNS
    answer cannot differ from the checked one. https keeps the name: certificate verification
    already refuses a server that is not the named host.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not addresses:
        return url, {}
    address = addresses[0]
    host = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{host}:{parts.port}" if parts.port else host
    host_header = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=netloc).geturl(), {"Host": host_header}
