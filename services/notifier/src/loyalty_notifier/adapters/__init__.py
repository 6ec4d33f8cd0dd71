"""The notifier service's adapters (filled in by the notifier issue)."""
