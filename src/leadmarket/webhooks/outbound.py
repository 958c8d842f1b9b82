"""HTTP clients for calling buyers' servers (webhook deliveries, ping endpoints) that cannot be
turned against the service's own network, even by DNS rebinding.

A buyer chooses the URL, so a buyer chooses the host name, and a host name may answer a public
address to one lookup and ``127.0.0.1`` to the next. Checking the name and then letting the HTTP
library resolve it again to connect is therefore no check at all. Here the name is resolved
**once, at connection time**, every address it gives is checked (one private address refuses
the whole name: a name that mixes them is someone's trick), and the connection is made to a
checked address itself. Everything else still uses the name: the ``Host`` header comes from the
URL, and for https httpcore gives the name as TLS SNI and verifies the certificate against it,
because the name stays the connection's origin; only the socket is pinned.

The pinning lives in an httpcore network backend under an ordinary :class:`httpx.AsyncClient`,
so pooled keep-alive connections (the ping client's) are reused safely: a pooled connection was
checked when it was opened. ``webhook_allow_private_networks`` (development and tests) keeps
the pinning but skips the check."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable, Mapping

import httpcore
import httpx

from leadmarket.config import Settings

_LOCAL_NAMES = ("localhost", "localhost.localdomain")


class AddressNotPublic(httpcore.ConnectError):
    """The host name (or one of its addresses) is not on the public internet. httpx raises it
    as the ``__cause__`` of an :class:`httpx.ConnectError`; see :func:`refused_as_private`."""


def is_private_address(address: str) -> bool:
    """True for anything but a global unicast address (loopback, private, link-local, CGNAT,
    documentation, multicast, the unspecified address, IPv4-mapped private addresses…)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global


def is_local_name(host: str) -> bool:
    host = host.lower().rstrip(".")
    return host in _LOCAL_NAMES or host.endswith(".localhost")


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order, each once. Tests replace
    this function to play a rebinding name server."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def checked_addresses(host: str, port: int, *, allow_private: bool) -> list[str]:
    """The addresses to connect to for ``host``: all of them public, or :class:`AddressNotPublic`
    (a :class:`httpcore.ConnectError`, like a name that does not resolve)."""
    if not allow_private and is_local_name(host):
        raise AddressNotPublic(f"{host} is not on the public internet")
    try:
        addresses = [str(ipaddress.ip_address(host))]  # a literal address: nothing to look up
    except ValueError:
        addresses = []
    try:
        addresses = addresses or await resolve(host, port)
    except OSError as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    if not addresses:
        raise httpcore.ConnectError(f"{host} has no address")
    if not allow_private and any(is_private_address(a) for a in addresses):
        raise AddressNotPublic(f"{host} resolves to an address that is not on the public internet")
    return addresses


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects to the checked addresses of the origin's host, trying them in order."""

    def __init__(self, *, allow_private: bool) -> None:
        self._allow_private = allow_private
        self._sockets = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await checked_addresses(host, port, allow_private=self._allow_private)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} took too long") from exc
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                return await self._sockets.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("buyers' servers are reached over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._sockets.sleep(seconds)


class PinnedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, its connection pool built on :class:`PinnedBackend`. Proxies are
    never used (``trust_env`` off): a proxy would resolve the name itself."""

    def __init__(
        self,
        *,
        allow_private: bool,
        limits: httpx.Limits | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        limits = limits or httpx.Limits()
        # Built once (loading the CA bundle is the slow part) and shared with httpx's own setup.
        ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
        super().__init__(verify=ssl_context, limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=PinnedBackend(allow_private=allow_private),
        )


def public_client(
    settings: Settings,
    *,
    timeout: float | httpx.Timeout = 5.0,
    headers: Mapping[str, str] | None = None,
    limits: httpx.Limits | None = None,
    verify: ssl.SSLContext | bool = True,
) -> httpx.AsyncClient:
    """An HTTP client for buyers' URLs: every connection pinned to checked public addresses
    (private ones too under ``webhook_allow_private_networks``), no redirects followed (a
    redirect could point anywhere), no proxy from the environment. ``verify`` is for tests
    that trust their own certificate authority."""
    return httpx.AsyncClient(
        transport=PinnedTransport(
            allow_private=settings.webhook_allow_private_networks, limits=limits, verify=verify
        ),
        timeout=timeout,
        headers=headers,
        follow_redirects=False,
        trust_env=False,
    )


def refused_as_private(exc: BaseException) -> bool:
    """Whether an httpx error is the refusal of a non-public address (not worth retrying)."""
    return isinstance(exc, AddressNotPublic) or isinstance(exc.__cause__, AddressNotPublic)
