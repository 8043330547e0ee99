"""The worker pool: stateless executors of agent steps."""
