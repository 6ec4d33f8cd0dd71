"""Use cases of the points service: event handlers and queries."""
