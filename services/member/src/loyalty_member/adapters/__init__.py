"""Database tables and other I/O of the member service."""
