"""Free loopback ports for the services `medledger init` lays out (CometBFT nodes, exchange
gateways, APIs). Imports nothing of medledger, so the testnet, the PKI set-up and the
network layout share it without importing each other.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST_PORT = 20000


class NoFreePort(RuntimeError):
    """No free loopback port was found below the ephemeral range."""


def bindable(port: int) -> bool:
    """True when a listening socket could take this loopback port now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(count: int, exclude: set[int] | None = None) -> list[int]:
    """`count` distinct ports that are free now, below the kernel's ephemeral range.

    Below it because outgoing connections (CometBFT's own, the gateways') take ephemeral
    ports: a listening port picked from that range could be taken by an outgoing connection
    while its service is restarting.
    """
    exclude = set(exclude or ())
    low, high = LOWEST_PORT, max(LOWEST_PORT + 10 * count, ephemeral_low() - 1)
    rng = random.Random()
    out: list[int] = []
    tries = 0
    while len(out) < count:
        tries += 1
        if tries > 100 * count + 1000:
            raise NoFreePort(f"no {count} free loopback ports in {low}-{high}")
        port = rng.randint(low, high)
        if port in exclude or port in out or not bindable(port):
            continue
        out.append(port)
    return out


def free_port(exclude: set[int] | None = None) -> int:
    """One port free now, below the ephemeral range, not in `exclude`."""
    return free_ports(1, exclude)[0]
