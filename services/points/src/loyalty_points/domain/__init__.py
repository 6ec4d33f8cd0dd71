"""Points rules as plain Python: no I/O here."""
