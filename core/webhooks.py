"""Which webhook URLs may be called, how a POST is signed, and how a URL is logged.

A webhook URL is chosen by whoever submits, and the POST is made from inside the fleet: left
unchecked, ``--webhook http://169.254.169.254/latest/meta-data/...`` or ``http://10.0.0.5:5432``
would let a submitter reach the cloud's metadata service or internal hosts (server-side request
forgery). So a URL must be http(s), and every address its host resolves to must be a public one,
unless ``LOOPFREE_WEBHOOK_ALLOW`` lists the host (a name, an address or a CIDR); what "public"
means, with the IPv4 addresses hidden inside IPv6 ones unwrapped, is ``core.addresses``. The
check runs at submit (a clear error before anything is queued) and again for every attempt, on
the addresses the attempt then connects to, so a name that resolves differently later (DNS
rebinding) is refused too.

Signatures follow GitHub's and Stripe's scheme: ``X-Loopfree-Signature: sha256=HEX`` where HEX is
``HMAC_SHA256(secret, f"{timestamp}.{body}")`` and ``timestamp`` is ``X-Loopfree-Timestamp``
(Unix seconds). A receiver recomputes it, compares in constant time and rejects old timestamps
(README, "Webhooks").
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from core.addresses import IPAddress, legacy_ipv4, why_not_public
from core.errors import UserError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]

SIGNATURE_HEADER = "X-Loopfree-Signature"
TIMESTAMP_HEADER = "X-Loopfree-Timestamp"
EVENT_HEADER = "X-Loopfree-Event"
DELIVERY_HEADER = "X-Loopfree-Delivery"

class WebhookRefused(UserError):
    """A webhook URL is not allowed: wrong scheme, unresolvable, or a non-public address."""


@dataclass(frozen=True)
class WebhookPolicy:
    """Hosts that may be called although they are not public: ``LOOPFREE_WEBHOOK_ALLOW``."""

    hosts: frozenset[str] = frozenset()  # lower-case names or address strings
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, allow: str | Iterable[str]) -> WebhookPolicy:
        """``"hooks.internal, 10.0.0.0/8, 127.0.0.1"``: names, addresses and CIDRs."""
        entries = allow.split(",") if isinstance(allow, str) else list(allow)
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower().strip("[]")
            if not entry:
                continue
            if "/" in entry:
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError as error:
                    raise UserError(
                        f"LOOPFREE_WEBHOOK_ALLOW: {raw.strip()!r} is not a CIDR ({error}); "
                        "write a host name, an address or a network such as 10.0.0.0/8"
                    ) from None
            else:
                hosts.add(entry)
        return cls(hosts=frozenset(hosts), networks=tuple(networks))

    def allows_host(self, host: str) -> bool:
        return host.lower().strip("[]") in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        return str(address) in self.hosts or any(address in net for net in self.networks)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, as the connection would see them."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def split_webhook_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL; ``WebhookRefused`` otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise WebhookRefused(f"webhook URL {redact_url(url)} does not parse: {error}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise WebhookRefused(
            f"webhook URL {redact_url(url)}: only http:// and https:// URLs are allowed"
        )
    if not parts.hostname:
        raise WebhookRefused(f"webhook URL {redact_url(url)} has no host")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80)


def allowed_addresses(
    host: str, port: int, policy: WebhookPolicy, resolve: Resolver = system_resolver
) -> list[str]:
    """The addresses of ``host`` that may be called; ``WebhookRefused`` if any may not.

    Every address must pass, not just one: the connection may pick any of them.
    """
    literal = _literal_address(host)
    if policy.allows_host(host):
        if literal is not None:
            return [str(literal)]
        try:
            return list(resolve(host, port))
        except OSError as error:
            raise WebhookRefused(f"webhook host {host} does not resolve: {error}") from None
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = list(resolve(host, port))
        except OSError as error:
            raise WebhookRefused(
                f"webhook host {host} does not resolve ({error}); check the URL"
            ) from None
    if not addresses:
        raise WebhookRefused(f"webhook host {host} resolves to no address; check the URL")
    for text in addresses:
        address = ipaddress.ip_address(text.split("%")[0])  # drop an IPv6 zone id
        reason = why_not_public(address)
        if reason is not None and not policy.allows_address(address):
            named = host if host.strip("[]") == str(address) else f"{host} ({address})"
            raise WebhookRefused(
                f"webhook host {named} is {reason}; webhooks go to public addresses only, unless "
                f"LOOPFREE_WEBHOOK_ALLOW lists the host (e.g. LOOPFREE_WEBHOOK_ALLOW={host})"
            )
    return addresses


def _literal_address(host: str) -> IPAddress | None:
    """The address a host names literally, legacy IPv4 spellings (``0x7f.1``) included, so
    that the verdict on it does not depend on what the resolver makes of them."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return legacy_ipv4(host)


def check_webhook_url(url: str, policy: WebhookPolicy, resolve: Resolver = system_resolver) -> str:
    """Return ``url`` if it may be called now; ``WebhookRefused`` (one line) otherwise."""
    _, host, port = split_webhook_url(url)
    allowed_addresses(host, port, policy, resolve)
    return url


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Loopfree-Signature`` value: ``sha256=`` + HMAC-SHA256 of ``"{timestamp}.{body}"``."""
    message = str(timestamp).encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def redact_url(url: str) -> str:
    """``scheme://host[:port]/…`` for logs: paths and queries often carry tokens."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    scheme = parts.scheme or "?"
    return f"{scheme}://{host}{port}/…"
