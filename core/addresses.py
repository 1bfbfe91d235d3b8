"""Whether an IP address is public, decided from our own copy of IANA's special-purpose registries.

A webhook may only go to a public address (core/webhooks.py). ``ipaddress``'s ``is_global`` and
``is_private`` are not enough on their own: their tables differ between Python versions (3.11.7
calls ``3fff::1``, a documentation prefix of 2024, global), and they do not look inside IPv6
addresses that carry an IPv4 address, so ``2002:a9fe:a9fe::`` (6to4 around 169.254.169.254, the
cloud metadata service) passed as public. Here:

- IPv4 is public unless it lies in a block of IANA's IPv4 Special-Purpose Address Registry that
  is not globally reachable, or in multicast or the reserved 240/4.
- IPv6 is public only inside the global unicast space 2000::/3, outside the blocks of IANA's IPv6
  Special-Purpose Address Registry that are not globally reachable, and only if every IPv4
  address it carries (6to4, Teredo server and client, an ISATAP interface id) is public too.
  Forms outside 2000::/3 that carry an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64) are
  named with the address they carry; the mapped form is as public as that address, the others
  are refused whole.
- Legacy IPv4 spellings the C resolver accepts (``2130706433``, ``0x7f.1``, ``0177.0.0.1``,
  ``127.1``) are read as the address they spell, so the answer does not depend on the resolver.

Where the registries mark a few addresses of a non-global block as reachable (anycast services
such as 192.0.0.9 or 2001:1::1), the whole block is refused anyway: no webhook lives there.
Sources: https://www.iana.org/assignments/iana-ipv4-special-registry and
https://www.iana.org/assignments/iana-ipv6-special-registry (as of 2025).
"""

from __future__ import annotations

import ipaddress
import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address

# Cloud metadata endpoints, named in refusals because they are the classic target. All of them are
# non-public anyway; naming them makes the refusal say what the address is.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)

# Not globally reachable, most specific first where blocks nest (the first match names the reason).
_IPV4_NOT_PUBLIC: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(block), reason)
    for block, reason in (
        ("0.0.0.0/8", "a 'this network' address (0.0.0.0/8)"),
        ("10.0.0.0/8", "a private address (10.0.0.0/8)"),
        ("100.64.0.0/10", "a carrier-grade NAT address (100.64.0.0/10)"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address"),
        ("172.16.0.0/12", "a private address (172.16.0.0/12)"),
        ("192.0.0.0/24", "an IETF protocol assignment (192.0.0.0/24)"),
        ("192.0.2.0/24", "a documentation address (192.0.2.0/24)"),
        ("192.88.99.0/24", "the deprecated 6to4 relay anycast block (192.88.99.0/24)"),
        ("192.168.0.0/16", "a private address (192.168.0.0/16)"),
        ("198.18.0.0/15", "a benchmarking address (198.18.0.0/15)"),
        ("198.51.100.0/24", "a documentation address (198.51.100.0/24)"),
        ("203.0.113.0/24", "a documentation address (203.0.113.0/24)"),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "the broadcast address"),
        ("240.0.0.0/4", "a reserved address (240.0.0.0/4)"),
    )
)

_IPV6_NOT_PUBLIC: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(block), reason)
    for block, reason in (
        ("::/128", "the unspecified address"),
        ("::1/128", "a loopback address"),
        ("64:ff9b:1::/48", "a local-use NAT64 address (64:ff9b:1::/48)"),
        ("100::/64", "a discard-only address (100::/64)"),
        ("100:0:0:1::/64", "a dummy address (100:0:0:1::/64)"),
        ("2001:2::/48", "a benchmarking address (2001:2::/48)"),
        ("2001:10::/28", "a deprecated ORCHID identifier (2001:10::/28)"),
        ("2001:20::/28", "an ORCHIDv2 identifier, not a routable address (2001:20::/28)"),
        ("2001:30::/28", "a drone entity tag, not a routable address (2001:30::/28)"),
        ("2001:db8::/32", "a documentation address (2001:db8::/32)"),
        ("3fff::/20", "a documentation address (3fff::/20)"),
        ("5f00::/16", "a segment routing identifier (5f00::/16)"),
        ("fc00::/7", "a unique-local (private) address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
    )
)

_GLOBAL_UNICAST = IPv6Network("2000::/3")
_IETF_PROTOCOL_ASSIGNMENTS = IPv6Network("2001::/23")  # refused whole, except Teredo inside it
_TEREDO = IPv6Network("2001::/32")
_SIX_TO_FOUR = IPv6Network("2002::/16")
_MAPPED = IPv6Network("::ffff:0:0/96")
_COMPATIBLE = IPv6Network("::/96")
_NAT64 = IPv6Network("64:ff9b::/96")
# RFC 5214: an ISATAP interface id is 00-00-5E-FE (or 02-00-5E-FE, the u/l bit set) + IPv4.
_ISATAP_MARKERS = frozenset({0x00005EFE, 0x02005EFE})


def why_not_public(address: IPAddress) -> str | None:
    """Why ``address`` is not a public address, in words for an error message; None if it is."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(address, IPv4Address):
        return _ipv4_reason(address)
    carried = _carried_ipv4(address)
    for form, inner in carried:
        reason = _ipv4_reason(inner)
        if reason is not None:
            return f"{form} carrying {inner}, {reason}"
    for network, reason in _IPV6_NOT_PUBLIC:
        if address in network:
            return reason
    if address in _MAPPED:
        return None  # a socket reaches ::ffff:a.b.c.d as a.b.c.d, which passed above
    if address in _NAT64:
        return f"a NAT64 address (64:ff9b::/96, carrying {carried[0][1]})"
    if address in _COMPATIBLE:
        return f"a deprecated IPv4-compatible address (carrying {carried[0][1]})"
    if address not in _GLOBAL_UNICAST:
        return "outside the global unicast space 2000::/3"
    if address in _IETF_PROTOCOL_ASSIGNMENTS and address not in _TEREDO:
        return "an IETF protocol assignment (2001::/23)"
    return None


def _ipv4_reason(address: IPv4Address) -> str | None:
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for network, reason in _IPV4_NOT_PUBLIC:
        if address in network:
            return reason
    return None


def _carried_ipv4(address: IPv6Address) -> list[tuple[str, IPv4Address]]:
    """The IPv4 addresses an IPv6 address carries, each with the name of its form."""
    value = int(address)
    low32 = IPv4Address(value & 0xFFFFFFFF)
    if address in _MAPPED:
        return [("an IPv4-mapped address", low32)]
    if address in _NAT64:
        return [("a NAT64 address", low32)]
    if address in _COMPATIBLE and value > 1:
        return [("an IPv4-compatible address", low32)]
    carried = []
    if address in _SIX_TO_FOUR:
        carried.append(("a 6to4 address", IPv4Address((value >> 80) & 0xFFFFFFFF)))
    if address in _TEREDO:
        server = IPv4Address((value >> 64) & 0xFFFFFFFF)
        client = IPv4Address(~value & 0xFFFFFFFF)  # stored XOR-ed with all ones
        carried += [("a Teredo address (server)", server), ("a Teredo address (client)", client)]
    if (value >> 32) & 0xFFFFFFFF in _ISATAP_MARKERS:
        carried.append(("an ISATAP address", low32))
    return carried


def legacy_ipv4(host: str) -> IPv4Address | None:
    """The IPv4 address a host spelled the way ``inet_aton`` reads it, or None for a name.

    C resolvers take 1 to 4 dot-separated parts, each decimal, octal (a leading 0) or hex (0x);
    the last part fills the bytes that remain: ``127.1`` is 127.0.0.1, ``2130706433`` too.
    """
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers = []
    for part in parts:
        number = _legacy_number(part)
        if number is None:
            return None
        numbers.append(number)
    *leading, last = numbers
    if any(number > 0xFF for number in leading) or last >= 1 << (8 * (4 - len(leading))):
        return None
    value = last
    for index, number in enumerate(leading):
        value |= number << (8 * (3 - index))
    return IPv4Address(value)


def _legacy_number(part: str) -> int | None:
    """One part of a legacy IPv4 spelling, as ``inet_aton`` reads it; None if it is not one."""
    match = _LEGACY_PART.fullmatch(part)
    if match is None:
        return None
    hexadecimal, octal, decimal = match.groups()
    if hexadecimal is not None:
        return int(hexadecimal or "0", 16)
    if octal is not None:
        return int(octal, 8)
    return int(decimal, 10)


# ``0x1f`` (hex, digits optional as in glibc), ``017`` (octal), ``17`` (decimal); 40 digits at
# most, so a long name of digits costs nothing to reject.
_LEGACY_PART = re.compile(r"0[xX]([0-9a-fA-F]{0,40})|0([0-7]{1,40})|([1-9][0-9]{0,40}|0)")
