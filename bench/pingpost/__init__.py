"""Pings over HTTP against 10,000 campaigns, with the same server's /healthz as the baseline."""
