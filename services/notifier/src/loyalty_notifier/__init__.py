"""The notifier service: Templates, preferences and consent, deliveries, inbox."""
