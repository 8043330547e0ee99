"""Operator tools above the runtime: the CLI, the local stack, reports, security config, proto generation.

The runtime (`swarm.*` outside this package) never imports from here; services import only the runtime.
"""
