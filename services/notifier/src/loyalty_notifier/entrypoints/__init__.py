"""The notifier service's entrypoints (filled in by the notifier issue)."""
