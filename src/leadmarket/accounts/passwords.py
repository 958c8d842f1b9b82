"""Password hashing (argon2id) and the strength rule: long enough, and not guessable by a
password cracker's dictionary (zxcvbn's frequency lists), including guesses built from the
member's own name, username or email."""

from __future__ import annotations

from collections.abc import Sequence

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from zxcvbn import zxcvbn

MAX_PASSWORD_LENGTH = 128
# zxcvbn only looks at the first 100 characters; beyond that length adds no guessing cost anyway.
_ZXCVBN_INPUT_LIMIT = 100


class PasswordPolicy:
    def __init__(
        self,
        *,
        min_length: int,
        min_strength: int,
        time_cost: int,
        memory_kib: int,
    ) -> None:
        self.min_length = min_length
        self.min_strength = min_strength
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=1, type=Type.ID
        )
        # Verified against when no account matches, so a miss costs as much time as a hit.
        self._dummy_hash = self._hasher.hash("leadmarket-no-such-account")

    def weakness(self, password: str, *, related: Sequence[str] = ()) -> str | None:
        """Why ``password`` is not acceptable, or None when it is."""
        if len(password) < self.min_length:
            return f"Use at least {self.min_length} characters."
        if len(password) > MAX_PASSWORD_LENGTH:
            return f"Use at most {MAX_PASSWORD_LENGTH} characters."
        if not password.strip():
            return "A password cannot be only spaces."
        inputs = [part for value in related if value for part in _words(value)]
        result = zxcvbn(password[:_ZXCVBN_INPUT_LIMIT], user_inputs=inputs)
        if int(result["score"]) >= self.min_strength:
            return None
        feedback = result.get("feedback") or {}
        warning = str(feedback.get("warning") or "").strip()
        suggestions = " ".join(str(s) for s in feedback.get("suggestions") or [])
        reason = warning or "This password is too easy to guess."
        if not reason.endswith("."):
            reason += "."
        return f"{reason} {suggestions}".strip()

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash or self._dummy_hash, password) and (
                password_hash is not None
            )
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)


def _words(value: str) -> list[str]:
    value = value.lower()
    parts = [value]
    for sep in ("@", ".", " ", "_", "-", "+"):
        parts = [p for part in parts for p in part.split(sep)]
    return [value, *[p for p in parts if len(p) >= 3]]
