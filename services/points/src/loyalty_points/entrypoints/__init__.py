"""HTTP routes and Kafka handlers of the points service: they translate and call use cases."""
