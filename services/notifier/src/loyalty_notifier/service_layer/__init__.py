"""The notifier service's service layer (filled in by the notifier issue)."""
