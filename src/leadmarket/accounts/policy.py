"""What each kind of credential may do (promise A2), decided in one place.

Every route names the :class:`Action` it performs. A "stay signed in" session may perform only
the actions A2 lists (:data:`REMEMBERED_SESSION_MAY`); anything else needs the password again
(``POST /api/v1/auth/reauth``), which unlocks the session for a few minutes. API keys serve
integrations: they may trade, never manage the account. Closing the account needs a password
entered in the last few minutes, whatever the session."""

from __future__ import annotations

import enum


class Action(enum.StrEnum):
    # A2's list: what a remembered session may do without the password.
    BUY_LEAD = "buy_lead"
    VIEW_DASHBOARD = "view_dashboard"
    VIEW_ACCOUNT = "view_account"
    VIEW_ORDERS = "view_orders"
    VIEW_PROFILE = "view_profile"
    LEAVE_FEEDBACK = "leave_feedback"
    SEND_MESSAGE = "send_message"
    AFTER_SALE = "after_sale"  # cancel an order, request a return, submit a claim
    SIGN_OUT = "sign_out"
    REAUTHENTICATE = "reauthenticate"
    # Communication preferences (P7, P8) are account settings, and saying "no" must be at
    # least as easy as an unsubscribe link, which needs no sign-in at all: a remembered session
    # may narrow them (turn things off, opt out of sale) without the password.
    UPDATE_PREFERENCES = "update_preferences"
    # Everything else.
    # Widening them (a channel or topic turned on, marketing consent, personalised advertising,
    # withdrawing a do-not-sell) is consent, recorded as the member's: it needs the person who
    # knows the password, not whoever finds a remembered browser.
    GIVE_CONSENT = "give_consent"
    UPDATE_ACCOUNT = "update_account"
    CHANGE_PASSWORD = "change_password"
    MANAGE_SESSIONS = "manage_sessions"
    MANAGE_API_KEYS = "manage_api_keys"
    RESEND_VERIFICATION = "resend_verification"
    CLOSE_ACCOUNT = "close_account"
    SELL_LEADS = "sell_leads"
    MANAGE_CAMPAIGNS = "manage_campaigns"
    # Where bought leads (personal data) are sent: for a person who knows the password, not for
    # a remembered session or an API key, which could otherwise redirect every future lead.
    MANAGE_WEBHOOKS = "manage_webhooks"
    MOVE_MONEY = "move_money"
    ADMINISTER = "administer"
    READ_MEMBER_DATA = "read_member_data"


REMEMBERED_SESSION_MAY = frozenset(
    {
        Action.BUY_LEAD,
        Action.VIEW_DASHBOARD,
        Action.VIEW_ACCOUNT,
        Action.VIEW_ORDERS,
        Action.VIEW_PROFILE,
        Action.LEAVE_FEEDBACK,
        Action.SEND_MESSAGE,
        Action.AFTER_SALE,
        Action.SIGN_OUT,
        Action.REAUTHENTICATE,
        Action.UPDATE_PREFERENCES,
    }
)

# Account management is for people at a keyboard, not for integrations holding an API key;
# so is moving money in or out (charging the member's card): integrations may spend the wallet
# (BUY_LEAD), never fill or empty it.
API_KEY_MAY_NOT = frozenset(
    {
        Action.MOVE_MONEY,
        Action.UPDATE_ACCOUNT,
        Action.CHANGE_PASSWORD,
        Action.MANAGE_SESSIONS,
        Action.MANAGE_API_KEYS,
        Action.MANAGE_WEBHOOKS,
        Action.CLOSE_ACCOUNT,
        Action.ADMINISTER,
        Action.READ_MEMBER_DATA,
        Action.SIGN_OUT,
        Action.REAUTHENTICATE,
        Action.UPDATE_PREFERENCES,
        Action.GIVE_CONSENT,
    }
)

# Needs a password entered within the re-authentication window, even on a normal session.
NEEDS_RECENT_PASSWORD = frozenset({Action.CLOSE_ACCOUNT})
