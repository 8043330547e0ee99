-- Dynamic spawn in the event log: which step spawned a step. The dispatcher puts it in the 'queued'
-- event's attributes['spawned_by'] (steps of the submitted plan have none); a column makes it a plain
-- filter and GROUP BY key. Never edit this file once shipped: add 0004_... instead.
ALTER TABLE step_events ADD COLUMN IF NOT EXISTS spawned_by LowCardinality(String)
    MATERIALIZED attributes['spawned_by'] AFTER agent_id;
