"""Small cryptographic helpers shared by every domain: random tokens, token digests, keyed hashes
with purpose-separated keys (HKDF), and signed, expiring, URL-safe tokens for emailed links."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def random_token(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def token_digest(token: str) -> str:
    """Digest under which a high-entropy bearer token is stored and looked up."""
    return hashlib.sha256(token.encode()).hexdigest()


def derive_key(root: bytes, purpose: str, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=purpose.encode()).derive(
        root
    )


def keyed_hash(key: bytes, value: str) -> str:
    # hmac.digest: the one-shot C path, a few times cheaper than hmac.new(…).hexdigest().
    return hmac.digest(key, value.encode(), "sha256").hex()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class BadSignature(Exception):
    """The token was altered, signed for another purpose, or has expired."""


class Signer:
    """HMAC-SHA256 signed tokens carrying a small JSON payload and an expiry. Each purpose
    ("verify-email", "reset-password", …) has its own derived key, so a token minted for one
    purpose is worthless for another."""

    def __init__(self, root_key: bytes) -> None:
        self._root = root_key
        self._keys: dict[str, bytes] = {}

    def _key(self, purpose: str) -> bytes:
        if purpose not in self._keys:
            self._keys[purpose] = derive_key(self._root, "signed-token:" + purpose)
        return self._keys[purpose]

    def sign(self, purpose: str, payload: dict[str, Any], *, ttl_seconds: int) -> str:
        body = dict(payload, exp=int(time.time()) + ttl_seconds)
        data = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
        mac = _b64(hmac.new(self._key(purpose), data.encode(), hashlib.sha256).digest())
        return f"{data}.{mac}"

    def unsign(self, purpose: str, token: str) -> dict[str, Any]:
        data, _, mac = token.partition(".")
        if not data or not mac:
            raise BadSignature("malformed token")
        expected = _b64(hmac.new(self._key(purpose), data.encode(), hashlib.sha256).digest())
        # Bytes, not str: compare_digest refuses non-ASCII strings, and links are user input.
        if not hmac.compare_digest(mac.encode(), expected.encode()):
            raise BadSignature("bad signature")
        try:
            body = json.loads(_unb64(data))
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadSignature("malformed token") from exc
        if not isinstance(body, dict) or not isinstance(body.get("exp"), int):
            raise BadSignature("malformed token")
        if body["exp"] < time.time():
            raise BadSignature("expired")
        return body
