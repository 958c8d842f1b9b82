"""Payment processors: how money comes into the exchange (M5)."""
