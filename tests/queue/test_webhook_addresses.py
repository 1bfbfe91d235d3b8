"""Which webhook addresses are public: a table of hostile forms that must be refused (IPv4 in
every spelling a C resolver accepts, every IPv6 form that carries an IPv4 address, the blocks of
IANA's special-purpose registries) and public addresses that must pass.

Literal addresses never reach the resolver: each check below runs with one that fails the test
if it is asked, so the verdict is the same offline, on musl or glibc, on any Python version.
"""

from __future__ import annotations

import socket

import pytest

from core.addresses import legacy_ipv4, why_not_public
from core.webhooks import WebhookPolicy, WebhookRefused, check_webhook_url
from notify.post import post


def no_lookup(host: str, port: int) -> list[str]:
    raise AssertionError(f"a literal address was sent to the resolver: {host}")


# (URL, what the refusal must name). Each is an SSRF into the fleet's own network or nowhere.
HOSTILE = [
    # IPv4, written plainly and the ways inet_aton reads it
    ("http://127.0.0.1/", "loopback"),
    ("http://2130706433/", "2130706433 (127.0.0.1) is a loopback"),
    ("http://0x7f.1/", "(127.0.0.1) is a loopback"),
    ("http://0177.0.0.1/", "(127.0.0.1) is a loopback"),
    ("http://127.1/", "(127.0.0.1) is a loopback"),
    ("http://0x7f000001/", "(127.0.0.1) is a loopback"),
    ("http://017700000001/", "(127.0.0.1) is a loopback"),
    ("http://127.000.000.001/", "(127.0.0.1) is a loopback"),
    ("http://0/", "(0.0.0.0) is a 'this network' address"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://2852039166/", "(169.254.169.254) is a cloud metadata"),
    ("http://0xa9.0xfe.0xa9.0xfe/", "(169.254.169.254) is a cloud metadata"),
    ("http://0251.0376.0251.0376/", "(169.254.169.254) is a cloud metadata"),
    ("http://169.254.1.1/", "link-local"),
    ("http://10.0.0.1/", "private address (10.0.0.0/8)"),
    ("http://172.16.5.4/", "private address (172.16.0.0/12)"),
    ("http://192.168.1.1/", "private address (192.168.0.0/16)"),
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://100.100.100.200/", "cloud metadata"),
    ("http://192.0.0.8/", "IETF protocol assignment"),
    ("http://192.0.2.10/", "documentation"),
    ("http://198.18.0.1/", "benchmarking"),
    ("http://198.19.255.254/", "benchmarking"),
    ("http://198.51.100.7/", "documentation"),
    ("http://203.0.113.9/", "documentation"),
    ("http://192.88.99.1/", "6to4 relay"),
    ("http://224.0.0.1/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "broadcast"),
    # IPv6 forms that carry an IPv4 address
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped address carrying 127.0.0.1, a loopback"),
    ("http://[::ffff:a9fe:a9fe]/", "IPv4-mapped address carrying 169.254.169.254, a cloud"),
    ("http://[::127.0.0.1]/", "IPv4-compatible address carrying 127.0.0.1"),
    ("http://[::a9fe:a9fe]/", "IPv4-compatible address carrying 169.254.169.254"),
    ("http://[::8.8.8.8]/", "deprecated IPv4-compatible address"),
    ("http://[2002:a9fe:a9fe::]/", "6to4 address carrying 169.254.169.254, a cloud metadata"),
    ("http://[2002:7f00:1::1]/", "6to4 address carrying 127.0.0.1, a loopback"),
    ("http://[2002:a00:1::]/", "6to4 address carrying 10.0.0.1, a private"),
    ("http://[2001:0:4136:e378:8000:63bf:5601:5601]/", "Teredo address (client) carrying 169.254"),
    ("http://[2001:0:a00:1:8000:63bf:f7f7:f7f7]/", "Teredo address (server) carrying 10.0.0.1"),
    ("http://[64:ff9b::a9fe:a9fe]/", "NAT64 address carrying 169.254.169.254"),
    ("http://[64:ff9b::7f00:1]/", "NAT64 address carrying 127.0.0.1"),
    ("http://[64:ff9b::808:808]/", "NAT64 address (64:ff9b::/96, carrying 8.8.8.8)"),
    ("http://[64:ff9b:1::808:808]/", "local-use NAT64"),
    ("http://[2001:4860:1::5efe:a9fe:a9fe]/", "ISATAP address carrying 169.254.169.254"),
    ("http://[2001:4860:1::200:5efe:a00:1]/", "ISATAP address carrying 10.0.0.1"),
    ("http://[2002:808:808:1::5efe:a9fe:a9fe]/", "ISATAP address carrying 169.254.169.254"),
    # IPv6 special-purpose blocks
    ("http://[::1]/", "loopback"),
    ("http://[::]/", "unspecified"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "link-local"),
    ("http://[fd00:ec2::254]/", "cloud metadata"),
    ("http://[fc00::1]/", "unique-local"),
    ("http://[fec0::1]/", "site-local"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[100::1]/", "discard-only"),
    ("http://[2001:db8::1]/", "documentation"),
    ("http://[3fff::1]/", "documentation"),
    ("http://[2001:2::1]/", "benchmarking"),
    ("http://[2001:10::1]/", "ORCHID"),
    ("http://[2001:20::1]/", "ORCHIDv2"),
    ("http://[2001:1::1]/", "IETF protocol assignment"),
    ("http://[5f00::1]/", "segment routing"),
    ("http://[4000::1]/", "outside the global unicast space"),
]

PUBLIC = [
    "https://8.8.8.8/hook",
    "http://1.1.1.1:8080/hook",
    "http://134744072/hook",  # 8.8.8.8 in decimal: odd, but public
    "http://[2606:4700:4700::1111]/hook",
    "http://[2001:4860:4860::8888]/hook",
    "http://[::ffff:8.8.8.8]/hook",  # a socket reaches it as 8.8.8.8
    "http://[2002:808:808::1]/hook",  # 6to4 around a public address
    "http://[2001:0:4136:e378:8000:63bf:f7f7:f7f7]/hook",  # Teredo: both ends public
]


def test_the_table_holds_at_least_forty_hostile_forms() -> None:
    assert len(HOSTILE) >= 40 and len({url for url, _ in HOSTILE}) == len(HOSTILE)


@pytest.mark.parametrize(("url", "named"), HOSTILE, ids=[url for url, _ in HOSTILE])
def test_a_hostile_address_is_refused_naming_it_and_the_way_to_allow_it(url, named) -> None:
    with pytest.raises(WebhookRefused) as refused:
        check_webhook_url(url, WebhookPolicy(), no_lookup)
    message = str(refused.value)
    assert named in message and "LOOPFREE_WEBHOOK_ALLOW=" in message
    assert "\n" not in message


@pytest.mark.parametrize("url", PUBLIC)
def test_a_public_address_passes(url) -> None:
    assert check_webhook_url(url, WebhookPolicy(), no_lookup) == url


def test_a_name_is_judged_by_every_address_it_resolves_to() -> None:
    def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "2002:a9fe:a9fe::"]

    with pytest.raises(WebhookRefused, match=r"hooks.example.com \(2002:a9fe:a9fe::\) is a 6to4"):
        check_webhook_url("https://hooks.example.com/x", WebhookPolicy(), resolver)


def test_the_system_resolver_reads_legacy_spellings_as_the_address_they_spell() -> None:
    """Why they are parsed here: glibc's getaddrinfo turns them into addresses, offline too."""
    try:
        answers = {info[4][0] for info in socket.getaddrinfo("0x7f.1", 80)}
    except OSError:
        pytest.skip("this C library does not read legacy IPv4 spellings")
    assert answers == {"127.0.0.1"} == {str(legacy_ipv4("0x7f.1"))}


def test_legacy_spellings_that_are_not_addresses_are_names() -> None:
    for name in ("08.1.1.1", "1.2.3.4.5", "256.1", "1.16777216", "4294967296", "1_0", "a.b"):
        assert legacy_ipv4(name) is None, name


def test_the_allow_list_opens_a_tunnelled_address_by_host() -> None:
    url = "http://[2002:a9fe:a9fe::]/"
    assert check_webhook_url(url, WebhookPolicy.parse("2002:a9fe:a9fe::"), no_lookup) == url


def test_the_sender_refuses_a_6to4_metadata_address_at_send_time() -> None:
    outcome = post(
        "http://[2002:a9fe:a9fe::]/latest/meta-data/",
        b"{}",
        {},
        policy=WebhookPolicy(),
        deadline_s=2,
        resolve=no_lookup,
    )
    assert not outcome.sent and not outcome.retry
    assert "169.254.169.254" in outcome.detail and "6to4" in outcome.detail


def test_every_block_of_our_table_is_refused_whatever_python_says() -> None:
    """Our table decides; Python's flags may call some of these global on some versions."""
    from core.addresses import _IPV4_NOT_PUBLIC, _IPV6_NOT_PUBLIC

    for network, reason in (*_IPV4_NOT_PUBLIC, *_IPV6_NOT_PUBLIC):
        for address in (network.network_address, network.broadcast_address):
            verdict = why_not_public(address)
            assert verdict is not None, (address, reason)

