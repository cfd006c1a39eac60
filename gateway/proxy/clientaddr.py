"""Who the client is: the peer address, or what a trusted front proxy says it saw.

Forwarded headers are believed only from configured peers; from anyone else they are ignored,
so a client cannot pick its own address (which throttling and logs rely on).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.types import Scope

from gateway.proxy.headers import header

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _ip(hop: str) -> str | None:
    """A forwarded hop as an IP address in its normal form (proxies may add a port, and IPv6 in
    brackets then), or None when it is not one."""
    text = hop.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class ClientAddress:
    ip: str
    proto: str
    # The X-Forwarded-For value to send upstream: the trusted chain plus the peer.
    forwarded_for: str


class ClientResolver:
    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self._trusted: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(item, strict=False) for item in trusted_proxies
        )

    def _is_trusted(self, ip: str) -> bool:
        if not self._trusted:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self._trusted)

    def of_scope(self, scope: Scope) -> ClientAddress:
        """The client of an ASGI request (the forwarded routes and the gateway's own alike)."""
        headers = scope["headers"]
        peer = scope["client"][0] if scope.get("client") else ""
        return self.resolve(
            peer, scope["scheme"], header(headers, b"x-forwarded-for"), header(headers, b"x-forwarded-proto")
        )

    def resolve(
        self, peer: str, scheme: str, forwarded_for: bytes | None, forwarded_proto: bytes | None
    ) -> ClientAddress:
        if not forwarded_for or not self._is_trusted(peer):
            return ClientAddress(peer, scheme, peer)
        # Only hops that are IP addresses count: anything else a client wrote there is dropped, so
        # junk can never become an identity (for the lockout, the limits or the logs).
        chain = [ip for hop in forwarded_for.decode("latin-1").split(",") if (ip := _ip(hop))]
        # The client is the right-most hop that is not one of our own proxies.
        client = peer
        for hop in reversed(chain):
            client = hop
            if not self._is_trusted(hop):
                break
        proto = scheme
        if forwarded_proto:
            candidate = forwarded_proto.decode("latin-1").split(",")[0].strip().lower()
            if candidate in ("http", "https"):
                proto = candidate
        return ClientAddress(client, proto, ", ".join([*chain, peer]))
