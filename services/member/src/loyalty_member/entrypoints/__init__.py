"""HTTP routes and Kafka handlers of the member service: they translate and call use cases."""
