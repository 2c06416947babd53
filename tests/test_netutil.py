"""Free loopback ports shared by the testnet, the PKI set-up and the network layout."""

from __future__ import annotations

import socket

from medledger.host.ports import LOWEST_PORT, bindable, ephemeral_low, free_port, free_ports


def test_free_ports_are_distinct_bindable_below_the_ephemeral_range() -> None:
    ports = free_ports(8)
    assert len(set(ports)) == 8
    assert all(LOWEST_PORT <= p < max(LOWEST_PORT + 80, ephemeral_low()) for p in ports)
    assert all(bindable(p) for p in ports)


def test_excluded_and_taken_ports_are_never_given() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", free_port()))
        busy = taken.getsockname()[1]
        assert not bindable(busy)
        exclude = set(free_ports(20))
        for _ in range(20):
            port = free_port(exclude)
            assert port not in exclude and port != busy
