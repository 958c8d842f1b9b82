"""Member-to-member messages, threaded per order (M4)."""
