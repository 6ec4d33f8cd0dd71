"""The member service: members, identities, cards, tiers, check-ins, orders intake, feedback."""
