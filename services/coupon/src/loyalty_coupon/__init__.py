"""The coupon service: Coupon templates, campaigns, issued coupons, validation and redemption."""
