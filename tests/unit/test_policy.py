"""Relay policy: peer addresses, relay networks and domains, trust, recipient cap."""

from __future__ import annotations

import ipaddress

from gateway import replies
from gateway.config import SmtpConfig
from gateway.smtp._policy import RelayPolicy, normalize_domain, parse_peer_ip, recipient_domain


def policy(**overrides: object) -> RelayPolicy:
    return RelayPolicy.from_config(SmtpConfig(**overrides))


def test_ipv4_mapped_ipv6_peer_is_unwrapped_to_ipv4():
    """A dual-stack socket reports ::ffff:10.1.2.3; it matches IPv4 networks."""
    assert parse_peer_ip("::ffff:10.1.2.3") == ipaddress.IPv4Address("10.1.2.3")
    p = policy(relay_networks=["10.0.0.0/8"], trusted_networks=["10.1.0.0/16"])
    ip = parse_peer_ip("::ffff:10.1.2.3")
    assert p.peer_may_relay(ip) and p.is_trusted(ip)


def test_non_ip_peers_are_never_in_any_network():
    """A Unix socket path or a missing peer is neither relay-allowed nor trusted."""
    assert parse_peer_ip(None) is None
    assert parse_peer_ip("/run/cm.sock") is None
    p = policy(relay_networks=["0.0.0.0/0", "::/0"], trusted_networks=["0.0.0.0/0"])
    assert not p.peer_may_relay(None) and not p.is_trusted(None)


def test_ipv6_networks_match_ipv6_peers_only():
    """::1/128 matches ::1, not 127.0.0.1; 127.0.0.0/8 matches 127.0.0.1, not ::1."""
    p = policy(relay_networks=["::1/128"], trusted_networks=["127.0.0.0/8"])
    assert p.peer_may_relay(parse_peer_ip("::1"))
    assert not p.peer_may_relay(parse_peer_ip("127.0.0.1"))
    assert p.is_trusted(parse_peer_ip("127.0.0.1"))
    assert not p.is_trusted(parse_peer_ip("::1"))


def test_relay_domain_match_is_exact_and_case_insensitive():
    """'example.com' accepts Example.COM (and a trailing dot) but not its subdomains."""
    p = policy(relay_domains=["Example.com"])
    assert p.is_relay_domain(recipient_domain("a@EXAMPLE.com"))
    assert p.is_relay_domain(recipient_domain("a@example.com."))
    assert not p.is_relay_domain(recipient_domain("a@sub.example.com"))
    assert not p.is_relay_domain(recipient_domain("a@notexample.com"))


def test_leading_dot_relay_domain_matches_subdomains_only():
    """'.example.org' accepts any subdomain of example.org, but not example.org itself
    and not a look-alike such as badexample.org."""
    p = policy(relay_domains=[".example.org"])
    assert p.is_relay_domain("a.example.org")
    assert p.is_relay_domain("b.a.example.org")
    assert not p.is_relay_domain("example.org")
    assert not p.is_relay_domain("badexample.org")


def test_idn_domains_compare_in_either_spelling():
    """A relay domain written as a U-label matches the A-label and vice versa."""
    assert normalize_domain("Bücher.Example") == "xn--bcher-kva.example"
    p = policy(relay_domains=["bücher.example"])
    assert p.is_relay_domain(recipient_domain("jörg@xn--bcher-kva.example"))
    p = policy(relay_domains=["xn--bcher-kva.example"])
    assert p.is_relay_domain(recipient_domain("jörg@BÜCHER.example"))


def test_addresses_without_a_domain_or_with_a_literal_are_never_relay_domains():
    """'postmaster' and 'user@[192.0.2.1]' have no relay domain."""
    assert recipient_domain("postmaster") is None
    assert recipient_domain("user@[192.0.2.1]") is None
    assert recipient_domain("@example.com") is None


def test_check_recipient_outcomes():
    """Foreign domain from a non-relay peer -> 554 5.7.1; relay domain or relay-allowed
    peer -> accepted; the recipient cap (452 4.5.3) applies to everyone."""
    p = policy(relay_domains=["example.com"], max_recipients=2)
    assert p.check_recipient("x@foreign.test", relay_allowed=False, accepted=0) == (
        replies.RELAY_DENIED
    )
    assert p.check_recipient("x@example.com", relay_allowed=False, accepted=0) is None
    assert p.check_recipient("x@foreign.test", relay_allowed=True, accepted=1) is None
    assert p.check_recipient("x@example.com", relay_allowed=True, accepted=2) == (
        replies.TOO_MANY_RECIPIENTS
    )
