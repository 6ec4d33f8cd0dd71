"""The points service: a lot-based points and stored-value ledger, earning rules, expiry."""
