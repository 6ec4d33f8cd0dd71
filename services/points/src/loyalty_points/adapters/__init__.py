"""Database tables and the ledger store of the points service."""
