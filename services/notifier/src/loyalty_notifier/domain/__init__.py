"""The notifier service's domain (filled in by the notifier issue)."""
