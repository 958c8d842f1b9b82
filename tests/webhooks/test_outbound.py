"""Calls to buyers' servers are pinned to the addresses checked when the connection is made, so a
name that rebinds between a check and the connection cannot reach the service's own network.

A stand-in name server (``outbound.resolve`` replaced) plays the rebinding names; the buyer's
server is a real HTTP(S) server on loopback; the certificates are real, made here."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.config import Settings
from leadmarket.kit.db import Database
from leadmarket.webhooks import outbound
from tests.fixtures.orders import buyer_endpoint
from tests.orders.test_delivery import bought, worker

PUBLIC = "93.184.215.14"  # a global address; nothing here can reach it


class RebindingResolver:
    """Answers ``answers[n]`` to the n-th lookup (the last one from then on) and counts them."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return self.answers[min(len(self.lookups), len(self.answers)) - 1]


def strict(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_allow_private_networks": False})


def lenient(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_allow_private_networks": True})


def port_of(url: str) -> int:
    port = httpx.URL(url).port
    assert port is not None
    return port


async def test_a_name_that_rebinds_to_loopback_never_reaches_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first lookup (the check) says public, every later one says 127.0.0.1: the client
    looks up once and connects to the public address it checked, never to loopback."""
    resolver = RebindingResolver([PUBLIC], ["127.0.0.1"])
    monkeypatch.setattr(outbound, "resolve", resolver)
    with buyer_endpoint() as endpoint:
        url = f"http://rebind.example:{port_of(endpoint.url)}/leads"
        async with outbound.public_client(strict(settings), timeout=0.5) as client:
            with pytest.raises((httpx.ConnectError, httpx.ConnectTimeout)) as failed:
                await client.post(url, content=b"{}")
    assert endpoint.received == []
    assert resolver.lookups == ["rebind.example"]
    assert not outbound.refused_as_private(failed.value)


@pytest.mark.parametrize(
    "answer",
    [["127.0.0.1"], [PUBLIC, "127.0.0.1"], ["10.0.0.7"], ["::ffff:127.0.0.1"], ["169.254.169.254"]],
)
async def test_one_private_address_refuses_the_name(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, answer: list[str]
) -> None:
    monkeypatch.setattr(outbound, "resolve", RebindingResolver(answer))
    with buyer_endpoint() as endpoint:
        url = f"http://buyer.example:{port_of(endpoint.url)}/leads"
        async with outbound.public_client(strict(settings), timeout=2) as client:
            with pytest.raises(httpx.ConnectError) as refused:
                await client.post(url, content=b"{}")
    assert outbound.refused_as_private(refused.value)
    assert endpoint.received == []


async def test_loopback_names_and_literals_are_refused_without_a_lookup(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolver = RebindingResolver([PUBLIC])
    monkeypatch.setattr(outbound, "resolve", resolver)
    with buyer_endpoint() as endpoint:
        async with outbound.public_client(strict(settings), timeout=2) as client:
            for url in (endpoint.url, f"http://localhost:{port_of(endpoint.url)}/leads"):
                with pytest.raises(httpx.ConnectError) as refused:
                    await client.post(url, content=b"{}")
                assert outbound.refused_as_private(refused.value)
    assert endpoint.received == []
    assert resolver.lookups == []  # localhost: refused by name; 127.0.0.1: no name to look up


async def test_the_connection_goes_to_the_resolved_address_with_the_name_as_host(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With private networks allowed (tests, development) the check is skipped but the
    connection is still pinned: ``buyer.example`` exists only in the stand-in resolver."""
    resolver = RebindingResolver(["127.0.0.1"])
    monkeypatch.setattr(outbound, "resolve", resolver)
    with buyer_endpoint() as endpoint:
        port = port_of(endpoint.url)
        async with outbound.public_client(lenient(settings), timeout=2) as client:
            response = await client.post(f"http://buyer.example:{port}/leads", content=b"{}")
    assert response.status_code == 200
    assert [r.headers["host"] for r in endpoint.received] == [f"buyer.example:{port}"]
    assert resolver.lookups == ["buyer.example"]


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.mark.parametrize(("served", "ok"), [("buyer.example", True), ("other.example", False)])
async def test_https_sends_the_name_as_sni_and_verifies_the_certificate_against_it(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    served: str,
    ok: bool,
) -> None:
    """The socket goes to 127.0.0.1, yet TLS is about ``buyer.example``: the server hears that
    name (SNI) and a certificate for another name is refused, trusted issuer or not."""
    cert_path, key_path = _certificate(tmp_path, served)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_path, key_path)
    sni: list[str | None] = []
    server_tls.sni_callback = lambda _socket, name, _context: sni.append(name)  # type: ignore[assignment]
    trusted = ssl.create_default_context(cafile=str(cert_path))
    monkeypatch.setattr(outbound, "resolve", RebindingResolver(["127.0.0.1"]))
    with buyer_endpoint(tls=server_tls) as endpoint:
        url = f"https://buyer.example:{port_of(endpoint.url)}/leads"
        async with outbound.public_client(lenient(settings), timeout=5, verify=trusted) as client:
            if ok:
                assert (await client.post(url, content=b"{}")).status_code == 200
            else:
                with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                    await client.post(url, content=b"{}")
    assert sni[:1] == ["buyer.example"]
    assert len(endpoint.received) == (1 if ok else 0)


async def test_a_delivery_to_a_name_that_turns_private_fails_for_good(
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    db: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The buyer's https name passed the check when it was saved; at delivery it resolves to
    loopback, where a real server listens: nothing reaches it, and the delivery ends."""
    assert not settings.webhook_allow_private_networks
    with buyer_endpoint() as endpoint:
        url = f"https://hooks.buyer.example:{port_of(endpoint.url)}/leads"
        headers, _, _, order = await bought(client, session, settings, url)
        monkeypatch.setattr(outbound, "resolve", RebindingResolver(["127.0.0.1"]))
        await worker(db, settings).run_once()
    log = await client.get(f"/api/v1/orders/{order['id']}/deliveries", headers=headers)
    assert [(d["status"], [a["error"] for a in d["attempts"]]) for d in log.json()] == [
        ("failed", ["The endpoint's address is not on the public internet."])
    ]
    assert endpoint.received == []
