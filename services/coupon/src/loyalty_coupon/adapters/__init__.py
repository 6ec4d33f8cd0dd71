"""The coupon service's adapters (filled in by the coupon issue)."""
