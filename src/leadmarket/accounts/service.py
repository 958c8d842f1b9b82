"""Accounts: registration, sign-in and sessions, step-up, email verification, password reset,
API keys and closing an account (promises A1–A5). The API and the pages both call these
functions; neither holds a rule of its own. Functions never commit: the caller owns the
transaction (the one exception is documented on :func:`login`)."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts import repository
from leadmarket.accounts.auth import (
    API_KEY_PREFIX,
    SESSION_TOKEN_PREFIX,
    AccountNotActive,
    Principal,
)
from leadmarket.accounts.passwords import PasswordPolicy
from leadmarket.accounts.schemas import MePatch, RegisterIn
from leadmarket.audit.service import Actor, record
from leadmarket.config import Settings
from leadmarket.kit.crypto import (
    BadSignature,
    Signer,
    derive_key,
    keyed_hash,
    random_token,
    token_digest,
)
from leadmarket.kit.db import utcnow
from leadmarket.kit.errors import (
    Conflict,
    DomainError,
    FieldError,
    Forbidden,
    NotFound,
    TooManyRequests,
    ValidationFailed,
)
from leadmarket.models import ApiKey, LoginFailure, Role, User, UserSession, UserStatus
from leadmarket.notifications.service import queue_mail


class InvalidCredentials(DomainError):
    status = 401
    slug = "invalid-credentials"
    title = "Wrong login or password"
    explanation = "No active account matches this login and password."


class WeakPassword(ValidationFailed):
    slug = "weak-password"
    title = "Password too weak"
    explanation = "The password is too short or too easy to guess; `errors` says why."


class InvalidLink(DomainError):
    status = 400
    slug = "invalid-link"
    title = "Link invalid or expired"
    explanation = "The link was altered, already used, or has expired; ask for a new one."


@dataclass(frozen=True)
class ClientMeta:
    ip: str
    user_agent: str | None


class AccountsKit:
    """Per-process helpers built once from the settings (hashing parameters, derived keys)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.passwords = PasswordPolicy(
            min_length=settings.password_min_length,
            min_strength=settings.password_min_strength,
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
        )
        root = settings.signing_key()
        self.signer = Signer(root)
        self._throttle_key = derive_key(root, "login-throttle")
        self._fingerprint_key = derive_key(root, "account-fingerprint")

    def throttle_hash(self, scope: str, value: str) -> str:
        return keyed_hash(self._throttle_key, f"{scope}:{value.casefold()}")

    def fingerprint(self, value: str) -> str:
        """A short keyed digest that ties a link to a state (an email, a password hash)
        without putting that state in the link."""
        return keyed_hash(self._fingerprint_key, value)[:24]


def _actor(principal: Principal) -> Actor:
    return Actor("user", principal.user.id)


def _link(settings: Settings, path: str, token: str) -> str:
    return f"{settings.base_url.rstrip('/')}{path}?token={token}"


def _weakness(kit: AccountsKit, password: str, *, field: str, related: list[str]) -> None:
    reason = kit.passwords.weakness(password, related=related)
    if reason is not None:
        raise WeakPassword(reason, errors=[FieldError(field, reason)])


# Registration and email verification -------------------------------------------------------


async def register(
    session: AsyncSession, kit: AccountsKit, data: RegisterIn, meta: ClientMeta
) -> User:
    conflicts: list[FieldError] = []
    if await repository.user_by_email(session, data.email) is not None:
        conflicts.append(FieldError("email", "An account with this email already exists."))
    if await repository.user_by_username(session, data.username) is not None:
        conflicts.append(FieldError("username", "This username is taken."))
    if conflicts:
        raise Conflict(conflicts[0].message, errors=conflicts)
    _weakness(kit, data.password, field="password", related=[data.email, data.username, data.name])
    user = User(
        email=data.email,
        username=data.username,
        username_key=data.username.casefold(),
        role=data.role,
        name=data.name,
        phone=data.phone,
        address=data.address.model_dump() if data.address else None,
        password_hash=kit.passwords.hash(data.password),
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:
        # A concurrent registration took the email or username between our check and insert.
        raise Conflict("An account with this email or username already exists.") from None
    await record(
        session,
        actor=Actor("user", user.id),
        action="account.registered",
        subject_type="user",
        subject_id=user.id,
        details={"role": user.role},
    )
    await send_verification_mail(session, kit, user)
    return user


async def send_verification_mail(session: AsyncSession, kit: AccountsKit, user: User) -> None:
    if user.email_verified_at is not None:
        raise Conflict("This email address is already verified.")
    token = kit.signer.sign(
        "verify-email",
        {"u": user.id, "e": kit.fingerprint(user.email)},
        ttl_seconds=kit.settings.email_token_hours * 3600,
    )
    link = _link(kit.settings, "/verify-email", token)
    await queue_mail(
        session,
        kit.settings,
        to=user.email,
        subject="Confirm your email address for Leadmarket",
        text_body=(
            f"Hello {user.username},\n\n"
            "Please confirm that this is your email address by opening this link:\n\n"
            f"{link}\n\n"
            f"The link works for {kit.settings.email_token_hours} hours. If you did not sign up "
            "for Leadmarket, ignore this message.\n"
        ),
        template="accounts/verify_email",
        user_id=user.id,
    )


async def verify_email(session: AsyncSession, kit: AccountsKit, token: str) -> User:
    try:
        payload = kit.signer.unsign("verify-email", token)
    except BadSignature:
        raise InvalidLink("This verification link is invalid or has expired.") from None
    user = await repository.user_by_id(session, str(payload.get("u")))
    if (
        user is None
        or user.status != UserStatus.ACTIVE
        or kit.fingerprint(user.email) != payload.get("e")
    ):
        raise InvalidLink("This verification link no longer matches an account.")
    if user.email_verified_at is None:
        user.email_verified_at = utcnow()
        await record(
            session,
            actor=Actor("user", user.id),
            action="account.email_verified",
            subject_type="user",
            subject_id=user.id,
        )
    return user


# Sign-in, sessions, step-up ----------------------------------------------------------------


async def _check_throttle(
    session: AsyncSession, kit: AccountsKit, keys: list[tuple[str, str, int]]
) -> None:
    now = utcnow()
    window = dt.timedelta(minutes=kit.settings.login_window_minutes)
    for scope, key_hash, limit in keys:
        count, oldest = await repository.failures_since(session, scope, key_hash, now - window)
        if count >= limit and oldest is not None:
            wait = math.ceil((oldest + window - now).total_seconds())
            raise TooManyRequests(
                "Too many failed sign-ins; try again later.", retry_after=max(wait, 1)
            )


def _throttle_keys(kit: AccountsKit, login: str, ip: str) -> list[tuple[str, str, int]]:
    return [
        (
            "account",
            kit.throttle_hash("account", login),
            kit.settings.login_max_failures_per_account,
        ),
        ("ip", kit.throttle_hash("ip", ip), kit.settings.login_max_failures_per_ip),
    ]


async def _find_login(session: AsyncSession, login: str) -> User | None:
    login = login.strip()
    if "@" in login:
        return await repository.user_by_email(session, login.lower())
    return await repository.user_by_username(session, login)


async def login(
    session: AsyncSession,
    kit: AccountsKit,
    *,
    login_name: str,
    password: str,
    remember: bool,
    kind: str,
    meta: ClientMeta,
) -> tuple[UserSession, str]:
    """Start a session; return it and its token (shown once, only its hash is kept).

    On a wrong password this records the failure and raises :class:`InvalidCredentials`. The
    failure must outlive the request's rollback, so the caller commits before re-raising."""
    keys = _throttle_keys(kit, login_name, meta.ip)
    await _check_throttle(session, kit, keys)
    user = await _find_login(session, login_name)
    active = user is not None and user.status != UserStatus.CLOSED
    if not kit.passwords.verify(user.password_hash if active and user else None, password):
        for scope, key_hash, _ in keys:
            session.add(LoginFailure(scope=scope, key_hash=key_hash))
        await record(
            session,
            actor=Actor.anonymous(),
            action="auth.login_failed",
            subject_type="user" if user else None,
            subject_id=user.id if user else None,
        )
        raise InvalidCredentials()
    assert user is not None
    if user.status == UserStatus.SUSPENDED:
        raise AccountNotActive("This account is suspended.")
    if kit.passwords.needs_rehash(user.password_hash):
        user.password_hash = kit.passwords.hash(password)
    await repository.forget_failures(session, "account", keys[0][1])
    now = utcnow()
    lifetime = (
        dt.timedelta(days=kit.settings.remember_days)
        if remember
        else dt.timedelta(hours=kit.settings.session_hours)
    )
    token = SESSION_TOKEN_PREFIX + random_token(32)
    user_session = UserSession(
        user_id=user.id,
        token_hash=token_digest(token),
        kind=kind,
        remembered=remember,
        csrf_token=random_token(24) if kind == "web" else None,
        ip=meta.ip,
        user_agent=(meta.user_agent or "")[:300] or None,
        created_at=now,
        last_used_at=now,
        expires_at=now + lifetime,
        # The password was just typed: a normal session may do sensitive things at once. A
        # remembered one may not (A2): it will outlive the moment the password was typed.
        reauth_until=None if remember else now + dt.timedelta(minutes=kit.settings.reauth_minutes),
    )
    session.add(user_session)
    await session.flush()
    await record(
        session,
        actor=Actor("user", user.id),
        action="auth.login",
        subject_type="session",
        subject_id=user_session.id,
        details={"remembered": remember, "kind": kind},
    )
    return user_session, token


async def logout(session: AsyncSession, principal: Principal) -> None:
    if principal.session is not None:
        principal.session.revoked_at = utcnow()
        await record(
            session,
            actor=_actor(principal),
            action="auth.logout",
            subject_type="session",
            subject_id=principal.session.id,
        )


async def reauth(
    session: AsyncSession, kit: AccountsKit, principal: Principal, password: str, meta: ClientMeta
) -> dt.datetime:
    """Step-up: the password again unlocks sensitive actions for ``reauth_minutes``. Wrong
    passwords count toward the sign-in throttle (the caller commits them, as for login)."""
    if principal.session is None:
        raise Forbidden("API keys cannot re-authenticate; sign in with your password.")
    keys = _throttle_keys(kit, principal.user.username, meta.ip)
    await _check_throttle(session, kit, keys)
    if not kit.passwords.verify(principal.user.password_hash, password):
        for scope, key_hash, _ in keys:
            session.add(LoginFailure(scope=scope, key_hash=key_hash))
        await record(
            session,
            actor=_actor(principal),
            action="auth.reauth_failed",
            subject_type="session",
            subject_id=principal.session.id,
        )
        raise InvalidCredentials("The password is wrong.")
    until = utcnow() + dt.timedelta(minutes=kit.settings.reauth_minutes)
    principal.session.reauth_until = until
    await record(
        session,
        actor=_actor(principal),
        action="auth.reauth",
        subject_type="session",
        subject_id=principal.session.id,
    )
    return until


async def list_sessions(session: AsyncSession, principal: Principal) -> list[UserSession]:
    return await repository.live_sessions_of(session, principal.user.id, utcnow())


async def revoke_session(session: AsyncSession, principal: Principal, session_id: str) -> None:
    await _revoke_own(session, principal, UserSession, session_id, "session")


async def _revoke_own(
    session: AsyncSession,
    principal: Principal,
    model: type[UserSession | ApiKey],
    item_id: str,
    subject_type: str,
) -> None:
    """Revoke one of the member's own sessions or API keys; anyone else's is "not found"."""
    item: UserSession | ApiKey | None = await session.get(model, item_id)
    if item is None or item.user_id != principal.user.id or item.revoked_at is not None:
        raise NotFound(f"No such {subject_type.replace('_', ' ')}.")
    item.revoked_at = utcnow()
    await record(
        session,
        actor=_actor(principal),
        action=f"auth.{subject_type}_revoked",
        subject_type=subject_type,
        subject_id=item.id,
    )


# Own account ------------------------------------------------------------------------------


async def read_own_account(session: AsyncSession, principal: Principal, *, channel: str) -> User:
    """The member's own record, personal data included; the read is recorded (A4)."""
    await record(
        session,
        actor=_actor(principal),
        action="pii.read",
        subject_type="user",
        subject_id=principal.user.id,
        fields=["email", "name", "phone", "address"],
        reason=f"self-service ({channel})",
    )
    return principal.user


async def update_account(
    session: AsyncSession, kit: AccountsKit, principal: Principal, patch: MePatch
) -> User:
    user = principal.user
    changes: dict[str, Any] = patch.model_dump(exclude_unset=True)
    for required in ("username", "email", "name"):
        if required in changes and changes[required] is None:
            raise ValidationFailed(
                f"{required} cannot be removed.",
                errors=[FieldError(required, "This field cannot be empty.")],
            )
    if "username" in changes and changes["username"].casefold() != user.username_key:
        other = await repository.user_by_username(session, changes["username"])
        if other is not None and other.id != user.id:
            raise Conflict("This username is taken.", errors=[FieldError("username", "Taken.")])
    email_changed = "email" in changes and changes["email"] != user.email
    if email_changed and await repository.user_by_email(session, changes["email"]) is not None:
        raise Conflict(
            "An account with this email already exists.",
            errors=[FieldError("email", "Already in use.")],
        )
    old_email = user.email
    for field, value in changes.items():
        if field == "address":
            user.address = value
        elif field == "username":
            user.username = value
            user.username_key = value.casefold()
        elif field != "email":
            setattr(user, field, value)
    if email_changed:
        user.email = changes["email"]
        user.email_verified_at = None
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict("The email or username was just taken by another account.") from None
    await record(
        session,
        actor=_actor(principal),
        action="account.updated",
        subject_type="user",
        subject_id=user.id,
        fields=sorted(changes),
    )
    if email_changed:
        await queue_mail(
            session,
            kit.settings,
            to=old_email,
            subject="Your Leadmarket email address was changed",
            text_body=(
                f"Hello {user.username},\n\nThe email address of your Leadmarket account was "
                "just changed. If you did not do this, reset your password at once and contact "
                "support.\n"
            ),
            template="accounts/email_changed",
            user_id=user.id,
        )
        await send_verification_mail(session, kit, user)
    return user


async def change_password(
    session: AsyncSession,
    kit: AccountsKit,
    principal: Principal,
    *,
    current_password: str,
    new_password: str,
) -> None:
    user = principal.user
    if not kit.passwords.verify(user.password_hash, current_password):
        raise ValidationFailed(
            "The current password is wrong.",
            errors=[FieldError("current_password", "The current password is wrong.")],
        )
    if new_password == current_password:
        raise WeakPassword(
            "The new password is the same as the current one.",
            errors=[FieldError("new_password", "Choose a password you have not used here.")],
        )
    _weakness(
        kit,
        new_password,
        field="new_password",
        related=[user.email, user.username, user.name or ""],
    )
    await _set_password(session, kit, user, new_password, keep_session=principal.session)
    await record(
        session,
        actor=_actor(principal),
        action="account.password_changed",
        subject_type="user",
        subject_id=user.id,
    )


async def _set_password(
    session: AsyncSession,
    kit: AccountsKit,
    user: User,
    password: str,
    *,
    keep_session: UserSession | None,
) -> None:
    """New hash, every other session and nothing else signed out, and the member told."""
    now = utcnow()
    user.password_hash = kit.passwords.hash(password)
    user.password_changed_at = now
    await repository.revoke_sessions(
        session, user.id, now, except_id=keep_session.id if keep_session else None
    )
    await queue_mail(
        session,
        kit.settings,
        to=user.email,
        subject="Your Leadmarket password was changed",
        text_body=(
            f"Hello {user.username},\n\nThe password of your Leadmarket account was just "
            "changed and your other sessions were signed out. If this was not you, reset your "
            f"password at {kit.settings.base_url.rstrip('/')}/forgot-password at once.\n"
        ),
        template="accounts/password_changed",
        user_id=user.id,
    )


async def request_password_reset(session: AsyncSession, kit: AccountsKit, email: str) -> None:
    """Mail a reset link if an active account has this address. The answer is the same either
    way, so the endpoint does not reveal who has an account."""
    user = await repository.user_by_email(session, email)
    if user is None or user.status != UserStatus.ACTIVE:
        return
    token = kit.signer.sign(
        "reset-password",
        # Tied to the current hash: the link dies as soon as the password changes.
        {"u": user.id, "p": kit.fingerprint(user.password_hash)},
        ttl_seconds=kit.settings.password_reset_minutes * 60,
    )
    await queue_mail(
        session,
        kit.settings,
        to=user.email,
        subject="Reset your Leadmarket password",
        text_body=(
            f"Hello {user.username},\n\nSomeone asked to reset the password of your Leadmarket "
            "account. To choose a new password, open this link:\n\n"
            f"{_link(kit.settings, '/reset-password', token)}\n\n"
            f"It works once, for {kit.settings.password_reset_minutes} minutes. If you did not "
            "ask for this, ignore this message: your password stays as it is.\n"
        ),
        template="accounts/password_reset",
        user_id=user.id,
    )
    await record(
        session,
        actor=Actor.anonymous(),
        action="account.password_reset_requested",
        subject_type="user",
        subject_id=user.id,
    )


async def reset_password(
    session: AsyncSession, kit: AccountsKit, *, token: str, new_password: str
) -> User:
    try:
        payload = kit.signer.unsign("reset-password", token)
    except BadSignature:
        raise InvalidLink("This reset link is invalid or has expired.") from None
    user = await repository.user_by_id(session, str(payload.get("u")), for_update=True)
    if (
        user is None
        or user.status != UserStatus.ACTIVE
        or kit.fingerprint(user.password_hash) != payload.get("p")
    ):
        raise InvalidLink("This reset link was already used or no longer matches an account.")
    _weakness(
        kit,
        new_password,
        field="new_password",
        related=[user.email, user.username, user.name or ""],
    )
    await _set_password(session, kit, user, new_password, keep_session=None)
    await record(
        session,
        actor=Actor("user", user.id),
        action="account.password_reset",
        subject_type="user",
        subject_id=user.id,
    )
    return user


async def close_account(session: AsyncSession, principal: Principal) -> None:
    """A5: the account closes and its personal data leaves view at once. The public username
    stays, because feedback other members left is tied to it; everything that identifies the
    person (email, name, phone, address, password) is erased."""
    user = principal.user
    now = utcnow()
    user.status = UserStatus.CLOSED
    user.closed_at = now
    user.email = f"closed+{user.id.lower()}@closed.invalid"
    user.name = None
    user.phone = None
    user.address = None
    user.password_hash = "!closed"  # not a hash: no password can ever match it
    user.email_verified_at = None
    await repository.revoke_sessions(session, user.id, now)
    await repository.revoke_api_keys(session, user.id, now)
    await record(
        session,
        actor=_actor(principal),
        action="account.closed",
        subject_type="user",
        subject_id=user.id,
    )


# API keys ---------------------------------------------------------------------------------


async def create_api_key(
    session: AsyncSession, principal: Principal, name: str
) -> tuple[ApiKey, str]:
    prefix = API_KEY_PREFIX + random_token(6)[:8]
    key = f"{prefix}_{random_token(32)}"
    api_key = ApiKey(
        user_id=principal.user.id,
        name=name.strip() or "key",
        prefix=prefix,
        key_hash=token_digest(key),
    )
    session.add(api_key)
    await session.flush()
    await record(
        session,
        actor=_actor(principal),
        action="auth.api_key_created",
        subject_type="api_key",
        subject_id=api_key.id,
    )
    return api_key, key


async def list_api_keys(session: AsyncSession, principal: Principal) -> list[ApiKey]:
    return await repository.api_keys_of(session, principal.user.id)


async def revoke_api_key(session: AsyncSession, principal: Principal, key_id: str) -> None:
    await _revoke_own(session, principal, ApiKey, key_id, "api_key")


# Public -----------------------------------------------------------------------------------


async def public_member(session: AsyncSession, username: str) -> User:
    user = await repository.user_by_username(session, username)
    if user is None or user.role not in (Role.BUYER, Role.SELLER):
        raise NotFound("No member has this username.")
    return user


async def create_staff(
    session: AsyncSession,
    kit: AccountsKit,
    *,
    email: str,
    username: str,
    name: str,
    password: str,
    role: Role,
) -> User:
    """Staff accounts (admin, privacy officer, support) are made from the command line only."""
    if await repository.user_by_email(session, email) or await repository.user_by_username(
        session, username
    ):
        raise Conflict("An account with this email or username already exists.")
    _weakness(kit, password, field="password", related=[email, username, name])
    user = User(
        email=email,
        username=username,
        username_key=username.casefold(),
        role=role,
        name=name,
        password_hash=kit.passwords.hash(password),
        email_verified_at=utcnow(),
    )
    session.add(user)
    await session.flush()
    await record(
        session,
        actor=Actor.system(),
        action="account.staff_created",
        subject_type="user",
        subject_id=user.id,
        details={"role": role.value},
    )
    return user
