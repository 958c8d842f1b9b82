"""Law-enforcement requests (P10): entered with their legal document by one admin, verified by
a second, answered with a production of only the fields P10 lists and only those asked for,
recorded as a disclosure and in the audit log."""
