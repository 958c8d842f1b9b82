"""Envelope encryption: versioned master keys wrap per-record data keys.

Every record that holds personal data (a lead) gets its own random 256-bit data key. The data
key seals the record's fields with AES-256-GCM; the data key itself is stored only wrapped
(AES-256-GCM again) by the current master key, tagged with that key's version. Destroying the
wrapped data key makes the record's ciphertext unrecoverable (crypto-shredding), whatever
copies of the ciphertext remain in backups. Rotating the master key re-wraps data keys; the
sealed fields never need re-encrypting.

Master keys come from ``LEADMARKET_MASTER_KEYS`` (``"3:<base64>,2:<base64>"``, the first is
current) or from the key file ``var_dir/master.keys`` (JSON), created on first use so a
development install works out of the box."""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12


class KeyringError(Exception):
    """The master keys are missing, malformed, or cannot open a wrapped key."""


class DecryptionFailed(Exception):
    """A ciphertext was altered, belongs to another record or field, or its key is gone."""


def new_data_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def seal(key: bytes, plaintext: bytes, context: bytes) -> bytes:
    """AES-256-GCM; ``context`` (authenticated, not stored) binds the ciphertext to the place it
    belongs, so a ciphertext copied to another record or field fails to open."""
    return Sealer(key).seal(plaintext, context)


class Sealer:
    """:func:`seal` for many values under one key, setting the key up once (a lead's ten fields
    under its data key). Every value still gets its own random nonce; the output is the same
    ``nonce + ciphertext`` as :func:`seal`'s."""

    def __init__(self, key: bytes) -> None:
        self._cipher = AESGCM(key)

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._cipher.encrypt(nonce, plaintext, context)


def open_sealed(key: bytes, sealed: bytes, context: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], context)
    except (InvalidTag, ValueError) as exc:
        raise DecryptionFailed("the ciphertext does not open with this key and context") from exc


@dataclass(frozen=True)
class WrappedKey:
    version: int
    wrapped: bytes


class Keyring:
    def __init__(self, keys: dict[int, bytes], current: int) -> None:
        if current not in keys:
            raise KeyringError(f"the current master key version {current} is not in the keyring")
        for version, key in keys.items():
            if len(key) != KEY_BYTES:
                raise KeyringError(f"master key version {version} is not {KEY_BYTES} bytes")
        self._keys = dict(keys)
        self.current = current
        # The current key wraps every new lead's data key: set it up once.
        self._current_sealer = Sealer(keys[current])

    @property
    def versions(self) -> list[int]:
        return sorted(self._keys)

    def wrap(self, data_key: bytes, owner: str) -> WrappedKey:
        sealed = self._current_sealer.seal(data_key, b"data-key|" + owner.encode())
        return WrappedKey(self.current, sealed)

    def unwrap(self, wrapped: WrappedKey, owner: str) -> bytes:
        master = self._keys.get(wrapped.version)
        if master is None:
            raise KeyringError(f"master key version {wrapped.version} is not in the keyring")
        return open_sealed(master, wrapped.wrapped, b"data-key|" + owner.encode())

    def rewrap(self, wrapped: WrappedKey, owner: str) -> WrappedKey:
        return self.wrap(self.unwrap(wrapped, owner), owner)

    # -- loading and saving ---------------------------------------------------------------

    @classmethod
    def from_env_value(cls, value: str) -> Keyring:
        keys: dict[int, bytes] = {}
        current: int | None = None
        for item in value.split(","):
            version_text, _, key_text = item.strip().partition(":")
            try:
                version = int(version_text)
                key = base64.b64decode(key_text, validate=True)
            except (ValueError, binascii.Error) as exc:
                raise KeyringError("master keys must read 'VERSION:BASE64,…'") from exc
            keys[version] = key
            current = version if current is None else current
        if current is None:
            raise KeyringError("no master key given")
        return cls(keys, current)

    @classmethod
    def from_file(cls, path: Path) -> Keyring:
        try:
            data = json.loads(path.read_text())
            keys = {int(v): base64.b64decode(k, validate=True) for v, k in data["keys"].items()}
            return cls(keys, int(data["current"]))
        except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise KeyringError(f"cannot read the master key file {path}") from exc

    def save(self, path: Path) -> None:
        """Write atomically with owner-only permissions."""
        path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps(
            {
                "current": self.current,
                "keys": {str(v): base64.b64encode(k).decode() for v, k in self._keys.items()},
            },
            indent=2,
        )
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def with_new_version(self) -> Keyring:
        version = max(self._keys) + 1
        return Keyring({**self._keys, version: secrets.token_bytes(KEY_BYTES)}, version)

    def without_versions(self, retired: set[int]) -> Keyring:
        if self.current in retired:
            raise KeyringError("the current master key cannot be retired")
        return Keyring({v: k for v, k in self._keys.items() if v not in retired}, self.current)


def load_keyring(env_value: str | None, key_file: Path) -> Keyring:
    if env_value:
        return Keyring.from_env_value(env_value)
    if not key_file.exists():
        Keyring({1: new_data_key()}, 1).save(key_file)
    return Keyring.from_file(key_file)
