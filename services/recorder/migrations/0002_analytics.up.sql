-- Analytics: time to first token and cost of inference calls, the plan's dependency edges, and two
-- views that turn step transitions into attempts and steps (what reports and dashboards read).
-- Never edit this file once shipped: add 0003_... instead.

-- Null when the backend did not report it (non-streaming backends): readers filter on IS NOT NULL.
ALTER TABLE inference_calls ADD COLUMN IF NOT EXISTS ttft_ms Nullable(Float64) AFTER duration_ms;

-- USD, from the recorder's per-model price table when the call is recorded (so a price change does not
-- rewrite history); 0 for models without a price.
ALTER TABLE inference_calls ADD COLUMN IF NOT EXISTS cost_usd Float64 DEFAULT 0 AFTER completion_tokens;

-- The plan's dependency edges, from each run's 'planned' event (the critical path needs them).
-- Steps spawned later carry theirs in the 'queued' step event's attributes['depends_on'] (comma-separated).
CREATE TABLE IF NOT EXISTS plan_steps
(
    run_id      String,
    step_id     String,
    agent_id    String,
    depends_on  Array(String),
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(inserted_at)
ORDER BY (run_id, step_id);

-- One row per attempt of a step. finished_at is the worker's end (start + duration) for a success,
-- else the dispatcher's time of the failure/cancellation. Times are Nullable: a step cancelled while
-- queued never started.
CREATE VIEW IF NOT EXISTS step_attempts AS
SELECT
    run_id,
    step_id,
    attempt,
    any(tenant) AS tenant,
    anyIf(agent_id, agent_id != '') AS agent_id,
    anyIf(worker_id, worker_id != '') AS worker_id,
    minIfOrNull(at, kind = 'queued') AS queued_at,
    minIfOrNull(at, kind = 'started') AS started_at,
    maxIf(duration_ms, kind = 'succeeded') AS run_ms,
    argMaxIf(kind, at, kind IN ('succeeded', 'failed', 'dead_lettered', 'cancelled')) AS outcome,
    if(outcome = 'succeeded' AND started_at IS NOT NULL AND run_ms > 0,
       addMicroseconds(started_at, toInt64(run_ms * 1000)),
       maxIfOrNull(at, kind IN ('succeeded', 'failed', 'dead_lettered', 'cancelled'))) AS finished_at,
    anyIf(error, error != '' AND kind IN ('failed', 'dead_lettered', 'retried')) AS error,
    sumIf(prompt_tokens, kind = 'succeeded') AS prompt_tokens,
    sumIf(completion_tokens, kind = 'succeeded') AS completion_tokens,
    anyIf(attributes['depends_on'], kind = 'queued') AS depends_on_attr
FROM step_events FINAL
GROUP BY run_id, step_id, attempt;

-- One row per step: its first queueing and its last attempt. (The inner renames keep the output
-- aliases from shadowing the columns inside the aggregates.)
CREATE VIEW IF NOT EXISTS step_spans AS
SELECT
    run_id,
    step_id,
    any(a_agent) AS agent_id,
    max(attempt) AS attempts_count,
    min(a_queued) AS queued_at,
    argMax(a_started, attempt) AS started_at,
    argMax(a_finished, attempt) AS finished_at,
    argMax(a_outcome, attempt) AS outcome,
    argMax(a_run_ms, attempt) AS run_ms,
    greatest(0, dateDiff('microsecond', queued_at, started_at) / 1000) AS queued_ms,
    sum(a_prompt) AS prompt_tokens,
    sum(a_completion) AS completion_tokens,
    arrayFilter(x -> x != '', splitByChar(',', max(a_deps))) AS depends_on_attr
FROM
(
    SELECT run_id, step_id, attempt, agent_id AS a_agent, queued_at AS a_queued, started_at AS a_started,
           finished_at AS a_finished, outcome AS a_outcome, run_ms AS a_run_ms, prompt_tokens AS a_prompt,
           completion_tokens AS a_completion, depends_on_attr AS a_deps
    FROM step_attempts
)
GROUP BY run_id, step_id;
