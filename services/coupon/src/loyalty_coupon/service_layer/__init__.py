"""The coupon service's service layer (filled in by the coupon issue)."""
