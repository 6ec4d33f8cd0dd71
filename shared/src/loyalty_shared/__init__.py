"""Contracts and plumbing shared by every loyalty service (no business rules live here)."""
