"""The privacy engine: retention (L4), consumer rights requests (P1–P6), disclosures (P2, P9,
P10), preferences (P7, P8) and the privacy notice (P11, P12)."""
