"""Outgoing mail: an outbox (``queue_mail``) drained by the ``mail.send`` job through a mail
backend, and the unsubscribe link every message carries (promise P7)."""
