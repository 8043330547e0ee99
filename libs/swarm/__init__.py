"""Swarm: an open execution substrate for massive multi-agent runs over NATS JetStream."""
