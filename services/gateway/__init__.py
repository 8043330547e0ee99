"""The inference gateway: core NATS request/reply on a queue group, admission control, engine backends."""
