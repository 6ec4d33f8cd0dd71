"""Use cases of the member service: one function per command."""
