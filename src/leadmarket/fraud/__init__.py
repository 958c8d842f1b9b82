"""Fraud and suspicious activity: signals, the admin review queue, and its actions (M6)."""
