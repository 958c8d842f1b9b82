"""The accounts JSON API (``/api/v1/auth/*``, ``/api/v1/me*``, ``/api/v1/api-keys``,
``/api/v1/members/{username}``). Thin: each route authorizes, then calls the service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response, status
from sqlalchemy.ext.asyncio import AsyncSession

from leadmarket.accounts import service
from leadmarket.accounts.auth import Principal, check_allowed, optional_principal, requires
from leadmarket.accounts.deps import client_meta, get_kit
from leadmarket.accounts.policy import Action
from leadmarket.accounts.schemas import (
    AccountOut,
    AddressOut,
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyOut,
    LoginIn,
    LoginOut,
    MeOut,
    MePatch,
    PasswordChangeIn,
    PasswordResetIn,
    PasswordResetRequestIn,
    PublicProfile,
    ReauthIn,
    ReauthOut,
    RegisterIn,
    SessionOut,
    VerifyEmailIn,
)
from leadmarket.accounts.service import AccountsKit
from leadmarket.feedback import service as feedback
from leadmarket.kit.routing import TransactionalRoute, get_session
from leadmarket.models import User, UserSession

router = APIRouter(prefix="/api/v1", route_class=TransactionalRoute, tags=["accounts"])

Session = Annotated[AsyncSession, Depends(get_session)]
Kit = Annotated[AccountsKit, Depends(get_kit)]
Anyone = Depends(optional_principal)
ItemId = Annotated[str, Path(max_length=40)]


def me_out(user: User) -> MeOut:
    return MeOut(
        id=user.id,
        username=user.username,
        role=user.role,
        status=user.status,
        email=user.email,
        email_verified=user.email_verified_at is not None,
        name=user.name,
        phone=user.phone,
        address=AddressOut.model_validate(user.address) if user.address else None,
        created_at=user.created_at,
    )


@router.post(
    "/auth/register",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Anyone],
    summary="Create a buyer or seller account (A1)",
    responses={409: {"description": "Email or username taken"}, 422: {"description": "Invalid"}},
)
async def register(body: RegisterIn, request: Request, session: Session, kit: Kit) -> AccountOut:
    user = await service.register(session, kit, body, client_meta(request))
    return AccountOut(id=user.id, username=user.username, role=user.role)


@router.post(
    "/auth/verify-email",
    dependencies=[Anyone],
    summary="Confirm an email address with the token from the emailed link",
)
async def verify_email(body: VerifyEmailIn, session: Session, kit: Kit) -> dict[str, bool]:
    await service.verify_email(session, kit, body.token)
    return {"email_verified": True}


@router.post(
    "/auth/login",
    dependencies=[Anyone],
    summary="Sign in with email or username; returns a bearer token",
    responses={401: {"description": "Wrong login or password"}, 429: {"description": "Throttled"}},
)
async def login(body: LoginIn, request: Request, session: Session, kit: Kit) -> LoginOut:
    try:
        user_session, token = await service.login(
            session,
            kit,
            login_name=body.login,
            password=body.password,
            remember=body.remember,
            kind="api",
            meta=client_meta(request),
        )
    except service.InvalidCredentials:
        await session.commit()  # the failure counts toward the throttle even though we refuse
        raise
    return LoginOut(
        token=token,
        session_id=user_session.id,
        expires_at=user_session.expires_at,
        remembered=user_session.remembered,
    )


@router.post(
    "/auth/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="End this session; its token stops working at once",
)
async def logout(
    session: Session, principal: Principal = Depends(requires(Action.SIGN_OUT))
) -> Response:
    await service.logout(session, principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/auth/reauth",
    summary="Enter the password again to unlock sensitive actions for a few minutes (A2)",
)
async def reauth(
    body: ReauthIn,
    request: Request,
    session: Session,
    kit: Kit,
    principal: Principal = Depends(requires(Action.REAUTHENTICATE)),
) -> ReauthOut:
    try:
        until = await service.reauth(session, kit, principal, body.password, client_meta(request))
    except service.InvalidCredentials:
        await session.commit()
        raise
    return ReauthOut(reauth_until=until)


@router.post(
    "/auth/password-reset",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Anyone],
    summary="Email a password reset link (the answer is the same whether or not the account "
    "exists)",
)
async def request_password_reset(
    body: PasswordResetRequestIn, session: Session, kit: Kit
) -> dict[str, str]:
    await service.request_password_reset(session, kit, body.email)
    return {"status": "If an account has this address, a reset link is on its way."}


@router.post(
    "/auth/password-reset/confirm",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Anyone],
    summary="Set a new password with the token from the reset link",
)
async def reset_password(body: PasswordResetIn, session: Session, kit: Kit) -> Response:
    await service.reset_password(session, kit, token=body.token, new_password=body.new_password)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me", summary="Your own account, personal data included (the read is audited)")
async def get_me(
    session: Session, principal: Principal = Depends(requires(Action.VIEW_ACCOUNT))
) -> MeOut:
    return me_out(await service.read_own_account(session, principal, channel="api"))


@router.patch(
    "/me",
    summary="Change your account data (needs the password again on a remembered session)",
)
async def patch_me(
    body: MePatch,
    session: Session,
    kit: Kit,
    principal: Principal = Depends(requires(Action.UPDATE_ACCOUNT)),
) -> MeOut:
    return me_out(await service.update_account(session, kit, principal, body))


@router.delete(
    "/me",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Close your account; its personal data is erased (needs a recent password)",
)
async def close_me(
    session: Session, principal: Principal = Depends(requires(Action.CLOSE_ACCOUNT))
) -> Response:
    await service.close_account(session, principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/me/password",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Change your password; your other sessions are signed out",
)
async def change_password(
    body: PasswordChangeIn,
    session: Session,
    kit: Kit,
    principal: Principal = Depends(requires(Action.CHANGE_PASSWORD)),
) -> Response:
    await service.change_password(
        session,
        kit,
        principal,
        current_password=body.current_password,
        new_password=body.new_password,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/me/verification-email",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send the email verification link again",
)
async def resend_verification(
    session: Session,
    kit: Kit,
    principal: Principal = Depends(requires(Action.RESEND_VERIFICATION)),
) -> dict[str, str]:
    await service.send_verification_mail(session, kit, principal.user)
    return {"status": "sent"}


def _session_out(item: UserSession, principal: Principal) -> SessionOut:
    return SessionOut(
        id=item.id,
        kind=item.kind,
        remembered=item.remembered,
        current=principal.session is not None and principal.session.id == item.id,
        created_at=item.created_at,
        last_used_at=item.last_used_at,
        expires_at=item.expires_at,
        ip=item.ip,
        user_agent=item.user_agent,
    )


@router.get("/me/sessions", summary="Your signed-in sessions (A3)")
async def list_sessions(
    session: Session, principal: Principal = Depends(requires(Action.VIEW_ACCOUNT))
) -> dict[str, list[SessionOut]]:
    items = await service.list_sessions(session, principal)
    return {"items": [_session_out(s, principal) for s in items]}


@router.delete(
    "/me/sessions/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Sign a session out; revoking your current one is signing out",
)
async def revoke_session(
    session_id: ItemId,
    session: Session,
    principal: Principal = Depends(requires(Action.SIGN_OUT)),
) -> Response:
    # Signing out the current session is always allowed; others need A2's step-up.
    if principal.session is None or principal.session.id != session_id:
        check_allowed(principal, Action.MANAGE_SESSIONS, ())
    await service.revoke_session(session, principal, session_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/api-keys",
    status_code=status.HTTP_201_CREATED,
    summary="Create an API key for an integration; the key is shown once",
)
async def create_api_key(
    body: ApiKeyIn,
    session: Session,
    principal: Principal = Depends(requires(Action.MANAGE_API_KEYS)),
) -> ApiKeyCreated:
    api_key, key = await service.create_api_key(session, principal, body.name)
    return ApiKeyCreated(id=api_key.id, name=api_key.name, prefix=api_key.prefix, key=key)


@router.get("/api-keys", summary="Your API keys (prefixes only)")
async def list_api_keys(
    session: Session, principal: Principal = Depends(requires(Action.VIEW_ACCOUNT))
) -> dict[str, list[ApiKeyOut]]:
    keys = await service.list_api_keys(session, principal)
    return {"items": [ApiKeyOut.model_validate(k, from_attributes=True) for k in keys]}


@router.delete(
    "/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Revoke an API key"
)
async def revoke_api_key(
    key_id: ItemId,
    session: Session,
    principal: Principal = Depends(requires(Action.MANAGE_API_KEYS)),
) -> Response:
    await service.revoke_api_key(session, principal, key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/members/{username}",
    dependencies=[Anyone],
    summary="A member's public profile: username, role, ratings (M3)",
)
async def public_profile(
    username: Annotated[str, Path(max_length=64)], session: Session
) -> PublicProfile:
    user = await service.public_member(session, username)
    ratings = await feedback.ratings_of(session, user.id)
    recent = await feedback.public_feedback(session, user.id, limit=feedback.RECENT_ON_PROFILE)
    return PublicProfile(
        username=user.username,
        role=user.role,
        member_since=user.created_at,
        rating_average=ratings.average,
        rating_count=ratings.count,
        rating_counts={str(star): count for star, count in ratings.per_star.items()},
        feedback=recent[: feedback.RECENT_ON_PROFILE],
    )
