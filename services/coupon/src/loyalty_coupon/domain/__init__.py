"""The coupon service's domain (filled in by the coupon issue)."""
