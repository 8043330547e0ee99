"""The aggregator: synthesis of a run's outputs into one answer."""
