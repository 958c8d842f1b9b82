"""What the after-sale pages say after each action (``?done=…`` on the page a form redirects
to). The after-sale *mail* (cancellation, return requested and decided, dispute opened and
decided, payout sent) is told by the notification center,
:mod:`leadmarket.notifications.notify`, called from :mod:`leadmarket.returns.service` and
:mod:`leadmarket.payouts.service` in the transaction of the change."""

from __future__ import annotations

PAGE_NOTICES = {
    "cancelled": "The order is cancelled; its price is back in your wallet.",
    "return_requested": "Your return is filed. Its status and history are below.",
    "disputed": "Your dispute is with an admin, whose decision is final.",
    "claim_filed": "Your claim is filed; an admin will answer it here.",
    "approved": "You approved the return; the buyer is refunded.",
    "denied": "You denied the return. The buyer may dispute it to an admin.",
    "paid_out": "Your payout is on its way.",
    "decided": "Decision recorded.",
}
