"""The coupon service's entrypoints (filled in by the coupon issue)."""
