"""Who may send what through the gateway: relay control at RCPT and peer trust.

    RelayPolicy.from_config(config.smtp)
    policy.peer_may_relay(ip)          relay_networks: may send to any domain
    policy.is_trusted(ip)              trusted_networks: their X-CM-* headers are kept
    policy.may_xforward(ip)            xforward_networks: offered XFORWARD
    policy.check_recipient(address, relay_allowed=..., accepted=...) -> Reply | None

Domains in ``relay_domains`` match exactly (case-insensitive, trailing dot and IDNA
A-label/U-label spelling ignored): ``example.com`` does NOT accept ``a.example.com``.
To accept every subdomain as well, write a leading dot: ``.example.com`` matches
``a.example.com`` and ``b.a.example.com`` (but not ``example.com`` itself; list both
if you want both). Exact by default because an open relay is the worst failure of a
relay, and sub-domains are often delegated to other mail systems.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from gateway import replies
from gateway.config import SmtpConfig
from gateway.replies import Reply

__all__ = ["RelayPolicy", "normalize_domain", "parse_peer_ip", "recipient_domain"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_peer_ip(host: str | None) -> _Address | None:
    """The peer's address, with IPv4-mapped IPv6 (``::ffff:10.1.2.3``) unwrapped to IPv4.

    None for anything that is not an IP address (a Unix socket, a missing peer).
    """
    if not host:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def normalize_domain(domain: str) -> str:
    """Lower case, no trailing dot, IDNA A-label form when it converts (so that
    ``bücher.example`` and ``xn--bcher-kva.example`` compare equal)."""
    domain = domain.strip().rstrip(".").lower()
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii").lower()
    except (UnicodeError, ValueError):
        return domain


def recipient_domain(address: str) -> str | None:
    """The normalised domain of ``local@domain``; None without ``@`` or for an
    address literal such as ``user@[192.0.2.1]`` (never a relay domain)."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or domain.startswith("["):
        return None
    return normalize_domain(domain)


def _networks(values: Iterable[str]) -> tuple[_Network, ...]:
    # IPv4 rules also cover clients that reach a dual-stack socket as ::ffff:a.b.c.d,
    # because parse_peer_ip unwraps those before matching.
    return tuple(ipaddress.ip_network(value, strict=False) for value in values)


def _in(ip: _Address | None, nets: tuple[_Network, ...]) -> bool:
    if ip is None:
        return False
    return any(ip.version == net.version and ip in net for net in nets)


@dataclass(frozen=True, slots=True)
class RelayPolicy:
    """Relay control for one listener, built once at start-up."""

    relay_networks: tuple[_Network, ...]
    trusted_networks: tuple[_Network, ...]
    xforward_networks: tuple[_Network, ...]
    exact_domains: frozenset[str]
    parent_domains: tuple[str, ...]  # ".example.com": subdomains of example.com
    max_recipients: int

    @classmethod
    def from_config(cls, smtp: SmtpConfig) -> RelayPolicy:
        exact: set[str] = set()
        parents: list[str] = []
        for entry in smtp.relay_domains:
            if entry.startswith("."):
                parents.append("." + normalize_domain(entry[1:]))
            else:
                exact.add(normalize_domain(entry))
        return cls(
            relay_networks=_networks(smtp.relay_networks),
            trusted_networks=_networks(smtp.trusted_networks),
            xforward_networks=_networks(smtp.xforward_networks),
            exact_domains=frozenset(exact),
            parent_domains=tuple(parents),
            max_recipients=smtp.max_recipients,
        )

    def peer_may_relay(self, ip: _Address | None) -> bool:
        """True when the peer is in ``relay_networks`` (may send to any domain)."""
        return _in(ip, self.relay_networks)

    def is_trusted(self, ip: _Address | None) -> bool:
        """True when the peer is in ``trusted_networks`` (its X-CM-* headers are kept)."""
        return _in(ip, self.trusted_networks)

    def exempt_from_client_limits(self, peer: str) -> bool:
        """True for relay and trusted networks: no per-client connection limits (as
        Postfix exempts mynetworks)."""
        ip = parse_peer_ip(peer)
        return _in(ip, self.relay_networks) or _in(ip, self.trusted_networks)

    def may_xforward(self, ip: _Address | None) -> bool:
        """True when the peer is in ``xforward_networks`` (is offered XFORWARD)."""
        return _in(ip, self.xforward_networks)

    def is_relay_domain(self, domain: str | None) -> bool:
        """True when mail for ``domain`` is accepted from anyone."""
        if domain is None:
            return False
        if domain in self.exact_domains:
            return True
        return any(domain.endswith(parent) for parent in self.parent_domains)

    def check_recipient(self, address: str, *, relay_allowed: bool, accepted: int) -> Reply | None:
        """None to accept ``address``; else the reply that refuses it.

        ``relay_allowed``: the peer is in a relay network or has authenticated.
        ``accepted``: recipients already accepted in this transaction.
        """
        if accepted >= self.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        if relay_allowed or self.is_relay_domain(recipient_domain(address)):
            return None
        return replies.RELAY_DENIED
