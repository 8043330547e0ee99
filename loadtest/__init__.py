"""Load tests behind `swarm loadtest`: scenarios that drive a real deployment, and what they measure."""
