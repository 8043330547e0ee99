-- The event log: step transitions, inference calls, and one row per run.
-- Never edit this file once shipped: add 0002_... instead.
-- `kind`/`status` are LowCardinality(String), not Enum: a kind added to the contracts later must
-- not make an insert fail (that would stall the recorder's batch until a migration ships).
-- ReplacingMergeTree collapses redelivered rows with the same sorting key; readers use FINAL or
-- uniqExact(event_id) so a row inserted twice before a merge is still counted once.

CREATE TABLE IF NOT EXISTS step_events
(
    event_id          String,
    run_id            String,
    tenant            LowCardinality(String),
    step_id           String,
    agent_id          String,
    attempt           UInt16,
    kind              LowCardinality(String),
    at                DateTime64(6, 'UTC'),
    duration_ms       Float64,
    prompt_tokens     UInt32,
    completion_tokens UInt32,
    worker_id         LowCardinality(String),
    error             String CODEC(ZSTD(3)),
    attributes        Map(LowCardinality(String), String) CODEC(ZSTD(3)),
    inserted_at       DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(at)
ORDER BY (run_id, step_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS inference_calls
(
    event_id          String,
    run_id            String,
    step_id           String,
    caller            LowCardinality(String),
    model             LowCardinality(String),
    backend           LowCardinality(String),
    ok                Bool,
    error             String CODEC(ZSTD(3)),
    prompt_tokens     UInt32,
    completion_tokens UInt32,
    queue_ms          Float64,
    duration_ms       Float64,
    at                DateTime64(6, 'UTC'),
    inserted_at       DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(at)
ORDER BY (run_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS runs
(
    run_id            String,
    tenant            LowCardinality(String),
    status            LowCardinality(String),
    goal              String CODEC(ZSTD(3)),
    error             String CODEC(ZSTD(3)),
    agents_count      UInt32,
    steps_total       UInt32,
    steps_succeeded   UInt32,
    steps_failed      UInt32,
    steps_cancelled   UInt32,
    retries           UInt32,
    prompt_tokens     UInt64,
    completion_tokens UInt64,
    submitted_at      Nullable(DateTime64(6, 'UTC')),
    finished_at       Nullable(DateTime64(6, 'UTC')),
    wall_ms           Float64,
    version           UInt64
)
ENGINE = ReplacingMergeTree(version)
-- Not partitioned by time: a run planned in one month and finished in the next must collapse to one row.
ORDER BY run_id;
