"""The recorder: consumes the EVENTS and RUNS streams into the ClickHouse event log, and answers read-only queries."""
