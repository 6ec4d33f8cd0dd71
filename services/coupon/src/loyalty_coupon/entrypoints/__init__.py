"""HTTP routes and Kafka handlers of the coupon service: they translate and call use cases."""
