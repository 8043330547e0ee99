"""Peers: the same plan on another engine, side by side with Swarm (`python -m loadtest.peers`, `make bench-peers`).

Ray (the `peers` extra, never a dependency of the product) runs the swarm-300x4000 plan that `swarm loadtest`
runs — same DAG, same seeded per-step latencies — the idiomatic way for I/O-bound steps: 4 async actors
with max_concurrency 100, a step an `asyncio.sleep` of its latency, its dependencies object refs.
`plan` maps a plan onto Ray and computes the figures (pure); `ray_engine` runs it (imports ray);
`bench` runs both engines and prints them side by side.
"""
