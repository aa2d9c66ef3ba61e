"""IP restriction: an organization's allowlist of networks, checked at login and on every request.

An empty list means no restriction. Addresses are matched with the stdlib ``ipaddress``
module; an IPv4-mapped IPv6 address (``::ffff:10.1.2.3``, what a dual-stack socket reports
for an IPv4 client) is matched as the IPv4 address it carries.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import redis
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from webapp.models import IpRule

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_RULES = 200
# One audit row per user and address per window: a scripted attack cannot flood the table.
REFUSAL_AUDIT_WINDOW = 60


class IpRuleError(ValueError):
    """A typed network is not valid, or saving it would lock the saver out; shown as is."""


@dataclass(frozen=True)
class RuleLine:
    """One network of the allowlist with its note, as validated from the admin's text."""

    network: str
    note: str = ""


def parse_network(text: str) -> IpNetwork:
    """Validate one network strictly (host bits must be zero); a bare address is a /32 or /128."""
    value = (text or "").strip()
    if not value:
        raise IpRuleError("Enter a network such as 192.0.2.0/24 or 2001:db8::/32.")
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            suggestion = ipaddress.ip_network(value, strict=False)
            raise IpRuleError(f"{value} has host bits set: the network containing it is "
                              f"{suggestion}. Enter {suggestion}, or a single address "
                              f"without a prefix.") from None
        raise IpRuleError(f"{value!r} is not an IPv4 or IPv6 network "
                          "(examples: 192.0.2.0/24, 203.0.113.7, 2001:db8::/32).") from None
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped \
            and network.prefixlen >= 96:
        # ::ffff:a.b.c.d/n would never match: clients are compared as plain IPv4.
        mapped = ipaddress.ip_network(
            f"{network.network_address.ipv4_mapped}/{network.prefixlen - 96}")
        raise IpRuleError(f"{value} is an IPv4-mapped IPv6 network: enter {mapped} instead.")
    return network


def parse_rules(text: str) -> list[RuleLine]:
    """Parse the allowlist text: one network per line, an optional note after '#'.

    Every bad line is reported at once (line number and reason), so nothing is half saved.
    """
    lines: list[RuleLine] = []
    errors: list[str] = []
    seen: set[str] = set()
    for number, raw in enumerate((text or "").splitlines(), start=1):
        value, _, note = raw.partition("#")
        if not value.strip():
            continue
        try:
            network = str(parse_network(value))
        except IpRuleError as exc:
            errors.append(f"Line {number}: {exc}")
            continue
        if network not in seen:
            seen.add(network)
            lines.append(RuleLine(network, note.strip()[:200]))
    if errors:
        raise IpRuleError(" ".join(errors))
    if len(lines) > MAX_RULES:
        raise IpRuleError(f"At most {MAX_RULES} networks; merge them into larger ones.")
    return lines


def client_address(address: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's address as an ip object, IPv4-mapped IPv6 turned into IPv4; None if unusable."""
    if not address:
        return None
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


def address_allowed(address: str | None, networks: list[str]) -> bool:
    """Whether this client address may use an organization with these networks (empty = all)."""
    if not networks:
        return True
    client = client_address(address)
    if client is None:
        return False  # an address we cannot read never passes a restriction
    for text in networks:
        network = ipaddress.ip_network(text, strict=False)
        if network.version == client.version and client in network:
            return True
    return False


def org_networks(session: Session, org_id: int) -> list[str]:
    """The networks of an organization's allowlist (empty: no restriction)."""
    return list(session.scalars(select(IpRule.network).where(IpRule.org_id == org_id)
                                .order_by(IpRule.id)))


def replace_rules(session: Session, org_id: int, rules: list[RuleLine],
                  saver_address: str | None) -> list[IpRule]:
    """Replace the organization's allowlist, refusing a list that would lock out its saver."""
    networks = [rule.network for rule in rules]
    if not address_allowed(saver_address, networks):
        raise IpRuleError(f"This list would lock you out: your address {saver_address} is in "
                          "none of these networks. Add a network containing it first.")
    session.execute(delete(IpRule).where(IpRule.org_id == org_id))
    saved = [IpRule(org_id=org_id, network=rule.network, note=rule.note) for rule in rules]
    session.add_all(saved)
    session.flush()
    return saved


def remove_rule(session: Session, org_id: int, rule_id: int, saver_address: str | None) -> IpRule:
    """Delete one network of the organization, unless that would lock out its saver."""
    rule = session.scalar(select(IpRule).where(IpRule.id == rule_id, IpRule.org_id == org_id))
    if rule is None:
        raise LookupError(rule_id)
    remaining = [n for n in org_networks(session, org_id) if n != rule.network]
    if remaining and not address_allowed(saver_address, remaining):
        raise IpRuleError(f"Removing {rule.network} would lock you out: your address "
                          f"{saver_address} is in none of the remaining networks.")
    session.delete(rule)
    session.flush()
    return rule


def should_audit_refusal(conn: redis.Redis, user_id: int, address: str) -> bool:
    """True for the first refusal of this user from this address in the window, else False."""
    key = f"skydesk:ipfilter:refused:{user_id}:{address}"
    return bool(conn.set(key, 1, nx=True, ex=REFUSAL_AUDIT_WINDOW))
