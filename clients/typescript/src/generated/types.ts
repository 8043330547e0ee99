// Generated from proto/ by `npm run generate` (run by `make proto`); do not edit.

/**
 * Any message of the contract.
 */
export type SwarmMessage =
  | InferenceCancel
  | InferenceChunk
  | InferenceEvent
  | InferenceEventBatch
  | InferenceRequest
  | InferenceResponse
  | RunEvent
  | StepDispatch
  | StepEvent
  | StepEventBatch
  | StepResultBatch
  | TaskSubmission;
export type RunEvent =
  | RunAccepted
  | RunRejected
  | RunPlanned
  | RunProgress
  | RunExecuted
  | RunCompleted
  | RunFailed
  | RunCancelRequested
  | RunCancelled;
/**
 * Why one part of a task was rejected: the JSON Schema keyword it breaks, or a rule schemas cannot state.
 */
export type RejectionCode =
  | "type"
  | "required"
  | "additionalProperties"
  | "pattern"
  | "format"
  | "minLength"
  | "maxLength"
  | "minItems"
  | "maxItems"
  | "maxProperties"
  | "propertyNames"
  | "minimum"
  | "maximum"
  | "exclusiveMinimum"
  | "exclusiveMaximum"
  | "const"
  | "enum"
  | "anyOf"
  | "json"
  | "msg_id_missing"
  | "msg_id_mismatch"
  | "tenant_mismatch"
  | "duplicate_id"
  | "unknown_agent"
  | "unknown_step"
  | "cycle"
  | "limit"
  | "too_large"
  | "plan_unavailable"
  | "plan_failed"
  | "invalid";
/**
 * The planner produced a validated plan; the dispatcher takes it from here.
 */
export type RunPlanned = RunPlanned1 & RunPlanned2;
export type RunPlanned1 =
  | {
      plan: {};
    }
  | {
      plan_ref: {};
    };
/**
 * How an agent remembers its earlier turns.
 */
export type MemoryMode = "none" | "last_turns" | "summary";
/**
 * Pattern templates the planner can instantiate.
 */
export type PlanPattern = "map" | "map-reduce" | "pipeline" | "vote";
/**
 * How a run treats failed steps.
 */
export type RunPolicy = "fail-fast" | "quorum";
/**
 * Where a plan came from.
 */
export type PlanSource = "explicit" | "llm" | "template";
/**
 * Every state transition a step can make.
 */
export type StepEventKind =
  | "queued"
  | "started"
  | "tool_call"
  | "inference_done"
  | "succeeded"
  | "failed"
  | "retried"
  | "dead_lettered"
  | "spawned"
  | "cancelled";
/**
 * Outcome of one attempt of a step.
 */
export type StepStatus = "succeeded" | "failed";
/**
 * A task published to the queue: a goal to decompose, or an explicit plan.
 */
export type TaskSubmission = TaskSubmission1 & TaskSubmission2;
export type TaskSubmission1 =
  | {
      goal: string;
    }
  | {
      plan: {};
    }
  | {
      plan_ref: {};
    };

/**
 * A caller no longer wants an inference call: every gateway replica hears it, the one running or queueing
 * the call stops it (the engine aborts the generation) and answers nothing more.
 */
export interface InferenceCancel {
  /**
   * The request_id of the call to stop.
   */
  request_id: string;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v: 1;
}
/**
 * One piece of a streamed completion, sent to the request's reply subject; the last one has done=True.
 */
export interface InferenceChunk {
  /**
   * Text generated since the previous chunk.
   */
  delta?: string;
  /**
   * Whether this is the last chunk.
   */
  done?: boolean;
  /**
   * Position of this chunk in the stream, from 0.
   */
  index: number;
  /**
   * The request's id.
   */
  request_id: string;
  /**
   * On the last chunk: the whole reply (content, tokens, timings) or the error.
   */
  response?: InferenceResponse | null;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v: 1;
}
/**
 * The gateway's answer.
 */
export interface InferenceResponse {
  /**
   * Engine backend.
   */
  backend?: string;
  /**
   * Completion tokens.
   */
  completion_tokens?: number;
  /**
   * The completion.
   */
  content?: string;
  /**
   * Engine time.
   */
  duration_ms?: number;
  /**
   * Why not, when not ok.
   */
  error?: string | null;
  /**
   * Model that served it.
   */
  model?: string;
  /**
   * Whether a completion was produced.
   */
  ok: boolean;
  /**
   * Prompt tokens.
   */
  prompt_tokens?: number;
  /**
   * Time waiting for an engine slot.
   */
  queue_ms?: number;
  /**
   * The request's id.
   */
  request_id: string;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v: 1;
}
/**
 * One gateway call, as recorded in ClickHouse's inference_calls.
 */
export interface InferenceEvent {
  /**
   * When it finished.
   */
  at?: string;
  /**
   * Backend.
   */
  backend: string;
  /**
   * Calling service.
   */
  caller?: string;
  /**
   * Completion tokens.
   */
  completion_tokens?: number;
  /**
   * Engine time.
   */
  duration_ms?: number;
  /**
   * Why not.
   */
  error?: string;
  /**
   * The request id.
   */
  event_id: string;
  /**
   * Model.
   */
  model: string;
  /**
   * Whether it produced a completion.
   */
  ok: boolean;
  /**
   * Prompt tokens.
   */
  prompt_tokens?: number;
  /**
   * Admission queue time.
   */
  queue_ms?: number;
  /**
   * Run, if any.
   */
  run_id?: string;
  /**
   * Step, if any.
   */
  step_id?: string;
  /**
   * Time from arrival to the first token (streamed replies; else unknown).
   */
  ttft_ms?: number | null;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v: 1;
}
/**
 * Several inference call events in one message: what a busy gateway publishes.
 */
export interface InferenceEventBatch {
  /**
   * The events, each recorded as if published alone.
   *
   * @minItems 1
   * @maxItems 2000
   */
  events: InferenceEvent[];
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v: 1;
}
/**
 * A completion request to the inference gateway (core NATS request/reply).
 */
export interface InferenceRequest {
  /**
   * Which service calls: planner, worker, aggregator.
   */
  caller?: string;
  /**
   * Budget in ms from when the gateway receives the request; past it, the request is answered 'deadline exceeded' (without running if it is still queued).
   */
  deadline_ms?: number | null;
  /**
   * OpenAI-style: lowers a token's score by this much per time it already occurs; None: the gateway's default.
   */
  frequency_penalty?: number | null;
  /**
   * Constrain the output to this JSON Schema.
   */
  json_schema?: {
    [k: string]: unknown | undefined;
  } | null;
  /**
   * Completion token budget.
   */
  max_tokens?: number;
  /**
   * The conversation.
   *
   * @minItems 1
   */
  messages: ChatMessage[];
  /**
   * Model name; 'default' is the gateway's configured model.
   */
  model?: string;
  /**
   * OpenAI-style: lowers a token's score by this much once it occurs at all; None: the gateway's default.
   */
  presence_penalty?: number | null;
  /**
   * Scheduling class, 0 first; default from caller: planner and aggregator 0, others 5.
   */
  priority?: number | null;
  /**
   * Divides the score of recently generated tokens (llama.cpp's repeat_penalty; 1: none); None: the gateway's default.
   */
  repetition_penalty?: number | null;
  /**
   * Unique id of the call.
   */
  request_id: string;
  /**
   * Run on whose behalf, for accounting.
   */
  run_id?: string | null;
  /**
   * Sampling seed, for a reproducible or a different sample; None: any.
   */
  seed?: number | null;
  /**
   * For the sim backend only: the answer starts with the prompt's last user message.
   */
  sim_echo?: boolean;
  /**
   * For the sim backend only (load tests): fail with an engine error, or answer garbage.
   */
  sim_fault?: ("error" | "garbage") | null;
  /**
   * For the sim backend only: answer a tool-loop decision with action 'final'.
   */
  sim_final?: boolean;
  /**
   * For the sim backend: force this latency.
   */
  sim_latency_ms?: number | null;
  /**
   * For the sim backend only: answer a tool-loop decision that calls this tool (arguments inline).
   */
  sim_tool_call?: SimToolCall | null;
  /**
   * Step on whose behalf, for accounting.
   */
  step_id?: string | null;
  /**
   * Stream the completion: InferenceChunk messages to the reply subject instead of one InferenceResponse.
   */
  stream?: boolean;
  /**
   * Sampling temperature.
   */
  temperature?: number;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v: 1;
}
/**
 * One chat message.
 */
export interface ChatMessage {
  /**
   * Text.
   */
  content: string;
  /**
   * Speaker.
   */
  role: "system" | "user" | "assistant";
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v?: 1;
}
/**
 * For the 'sim' backend only: one tool call the simulated model makes.
 */
export interface SimToolCall {
  /**
   * The call's arguments.
   */
  arguments?: {
    [k: string]: unknown | undefined;
  };
  /**
   * Read the arguments from this key of the payloads object store instead (large spawn requests).
   */
  arguments_ref?: string | null;
  /**
   * The tool's registry name, e.g. 'spawn'.
   */
  tool: string;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v?: 1;
}
/**
 * The planner took the task and is planning it: the run exists (the run index shows it as planning).
 */
export interface RunAccepted {
  /**
   * When it happened (with an offset).
   */
  at?: string;
  /**
   * The task's goal, cut as the run index shows it.
   */
  goal: string;
  /**
   * Event kind, also the last subject token.
   */
  kind: "accepted";
  /**
   * The run.
   */
  run_id: string;
  /**
   * When the task was submitted.
   */
  submitted_at: string;
  /**
   * Tenant of the run.
   */
  tenant: string;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v: 1;
}
/**
 * The task could not be accepted; nothing will run.
 */
export interface RunRejected {
  /**
   * When it happened (with an offset).
   */
  at?: string;
  /**
   * Why, in words: every reason on one line (cut when too long).
   */
  error: string;
  /**
   * Event kind, also the last subject token.
   */
  kind: "rejected";
  /**
   * Why, one entry per broken rule (the first 100).
   *
   * @maxItems 100
   */
  reasons?: RejectionReason[];
  /**
   * The run.
   */
  run_id: string;
  /**
   * Tenant of the run.
   */
  tenant: string;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v: 1;
}
/**
 * One machine-readable reason a task was rejected.
 */
export interface RejectionReason {
  code: RejectionCode;
  /**
   * The reason in words.
   */
  message: string;
  /**
   * JSON Pointer (RFC 6901) into the submitted body, e.g. '/plan/steps/3/depends_on/0'; '' for the message as a whole (its headers, subject or bytes).
   */
  path: string;
}
export interface RunPlanned2 {
  /**
   * Agents in the plan (known without reading it).
   */
  agents_count?: number;
  /**
   * When it happened (with an offset).
   */
  at?: string;
  /**
   * The goal (or a description of the explicit plan).
   */
  goal: string;
  /**
   * Event kind, also the last subject token.
   */
  kind: "planned";
  /**
   * How the LLM planned, when it did: 'sub-questions' (a small model listed agents with a role and an instruction; code built the DAG) or 'full-plan' (the model wrote agents and steps).
   */
  llm_schema?: ("sub-questions" | "full-plan") | null;
  /**
   * Why a template was used, when it was.
   */
  note?: string;
  /**
   * The validated plan, when its JSON fits 256 KiB; else `plan_ref` names it.
   */
  plan?: Plan | null;
  /**
   * Where the validated plan is stored, when it is too large to travel inline.
   */
  plan_ref?: PlanRef | null;
  policy?: RunPolicy;
  /**
   * Run priority.
   */
  priority?: number;
  /**
   * Quorum policy: the fraction of sub-agents whose final turn must succeed.
   */
  quorum?: number;
  /**
   * The run.
   */
  run_id: string;
  source: PlanSource;
  /**
   * Steps in the plan (known without reading it).
   */
  steps_count?: number;
  /**
   * When the task was submitted.
   */
  submitted_at: string;
  /**
   * Tenant of the run.
   */
  tenant: string;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v: 1;
}
/**
 * Agents and the step DAG of one run.
 */
export interface Plan {
  /**
   * The run's sub-agents.
   *
   * @minItems 1
   * @maxItems 300
   */
  agents: AgentSpec[];
  /**
   * The template the plan follows, if any.
   */
  pattern?: PlanPattern | null;
  /**
   * The run's steps (a DAG over depends_on).
   *
   * @minItems 1
   * @maxItems 4000
   */
  steps: StepSpec[];
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v?: 1;
}
/**
 * A sub-agent: an identity whose turns are steps.
 */
export interface AgentSpec {
  /**
   * Agent id, unique within the run.
   */
  id: string;
  /**
   * System instructions given to the agent on every step.
   */
  instructions?: string;
  memory?: MemoryPolicy;
  /**
   * Short role name, e.g. 'researcher'.
   */
  role: string;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v?: 1;
}
/**
 * What of an agent's earlier turns its next turn sees, within a context budget.
 */
export interface MemoryPolicy {
  /**
   * Characters of memory a prompt may hold; older turns go first.
   */
  max_chars?: number;
  /**
   * last_turns: how many of the latest turns are shown.
   */
  max_turns?: number;
  mode?: MemoryMode;
  /**
   * Memory the agent starts with: what a spawning parent gives its child (shown on every turn).
   */
  seed?: string;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v?: 1;
}
/**
 * One turn of one agent, a node of the run's DAG.
 */
export interface StepSpec {
  /**
   * The agent that takes this turn.
   */
  agent_id: string;
  /**
   * Steps whose outputs this step needs; it runs after all of them succeed.
   *
   * @maxItems 500
   *
   * Items: An identifier: letters, digits, '_' or '-'.
   */
  depends_on?: string[];
  /**
   * Step id, unique within the run.
   */
  id: string;
  /**
   * What the agent must do in this step.
   */
  instruction: string;
  /**
   * Attempts before the step is dead-lettered.
   */
  max_attempts?: number;
  /**
   * Completion token budget of the step.
   */
  max_tokens?: number;
  /**
   * JSON Schema the step's output must satisfy; a failing output gets a repair retry.
   */
  output_schema?: {
    [k: string]: unknown | undefined;
  } | null;
  /**
   * For the 'sim' backend only: the answer starts with the prompt the model received.
   */
  sim_echo?: boolean;
  /**
   * For the 'sim' inference backend only (load tests): 'fail_once' fails the step's first attempt, 'garbage' makes the model return an unusable output. Ignored by every other backend.
   */
  sim_fault?: ("fail_once" | "garbage") | null;
  /**
   * For the 'sim' inference backend only: the simulated engine latency of this step.
   */
  sim_latency_ms?: number | null;
  /**
   * For the 'sim' backend only: the simulated model makes these tool calls in order, then answers. Ignored by every other backend.
   *
   * @maxItems 20
   */
  sim_tool_calls?: SimToolCall[];
  /**
   * Seconds one attempt may run.
   */
  timeout_s?: number;
  /**
   * Tools the agent may call in this step, by registry name (e.g. 'python', 'spawn').
   */
  tools?: string[];
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v?: 1;
}
/**
 * A plan stored in the object store instead of travelling inline: found by its digest, checked by it.
 */
export interface PlanRef {
  /**
   * Hex SHA-256 of the plan's JSON bytes, which are the object 'plan-sha256-<sha256>' of the object store 'swarm_plans'. Readers check the digest: an object that does not match is refused.
   */
  sha256: string;
  /**
   * Length of the plan's JSON in bytes.
   */
  size: number;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v?: 1;
}
/**
 * Throttled progress of a running run.
 */
export interface RunProgress {
  /**
   * When it happened (with an offset).
   */
  at?: string;
  /**
   * Steps that finished (succeeded or dead-lettered) since the run's previous progress event (after a dispatcher takeover: every finished step, again). With the plan, a follower can show each agent's turns done and its current step.
   *
   * Items: An identifier: letters, digits, '_' or '-'.
   */
  finished_step_ids?: string[];
  /**
   * Event kind, also the last subject token.
   */
  kind: "progress";
  /**
   * Retries so far.
   */
  retries_count: number;
  /**
   * The run.
   */
  run_id: string;
  /**
   * Steps dead-lettered.
   */
  steps_failed: number;
  /**
   * Steps on the work queue, not yet finished.
   */
  steps_queued: number;
  /**
   * Steps succeeded.
   */
  steps_succeeded: number;
  /**
   * Steps in the plan.
   */
  steps_total: number;
  /**
   * Tenant of the run.
   */
  tenant: string;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v: 1;
}
/**
 * Every step is finished; the aggregator synthesizes the answer.
 */
export interface RunExecuted {
  /**
   * When it happened (with an offset).
   */
  at?: string;
  /**
   * The run's goal.
   */
  goal: string;
  /**
   * Event kind, also the last subject token.
   */
  kind: "executed";
  /**
   * Sub-agents whose final turn did not succeed (a quorum run goes on without them).
   */
  missing_agents?: MissingAgent[];
  /**
   * The run.
   */
  run_id: string;
  /**
   * Succeeded steps no other step depends on: the synthesis input.
   *
   * Items: An identifier: letters, digits, '_' or '-'.
   */
  sink_step_ids: string[];
  /**
   * When the task was submitted.
   */
  submitted_at: string;
  summary: RunSummary;
  /**
   * Tenant of the run.
   */
  tenant: string;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v: 1;
}
/**
 * A sub-agent whose final turn did not succeed: what a quorum run's answer is missing.
 */
export interface MissingAgent {
  /**
   * The agent.
   */
  agent_id: string;
  /**
   * Its last error, or why its final turn did not run.
   */
  error?: string;
  /**
   * Its role.
   */
  role?: string;
  /**
   * Its final turn (its last step in dependency order).
   */
  step_id: string;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v?: 1;
}
/**
 * Counts and totals of a finished run.
 */
export interface RunSummary {
  /**
   * Sub-agents in the plan.
   */
  agents_count: number;
  /**
   * Completion tokens over all steps (and synthesis).
   */
  completion_tokens: number;
  /**
   * Prompt tokens over all steps (and synthesis).
   */
  prompt_tokens: number;
  /**
   * Attempts beyond the first, over all steps.
   */
  retries_count: number;
  /**
   * Steps never run because the run ended first.
   */
  steps_cancelled?: number;
  /**
   * Steps dead-lettered after their last attempt.
   */
  steps_failed: number;
  /**
   * Steps that succeeded.
   */
  steps_succeeded: number;
  /**
   * Steps in the plan.
   */
  steps_total: number;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v?: 1;
  /**
   * From submission to the final answer.
   */
  wall_ms: number;
}
/**
 * The final answer.
 */
export interface RunCompleted {
  /**
   * The synthesized answer.
   */
  answer: string;
  /**
   * When it happened (with an offset).
   */
  at?: string;
  /**
   * Event kind, also the last subject token.
   */
  kind: "completed";
  /**
   * Sub-agents whose final turn did not succeed: the answer was made without them.
   */
  missing_agents?: MissingAgent[];
  /**
   * The run.
   */
  run_id: string;
  summary: RunSummary;
  /**
   * Tenant of the run.
   */
  tenant: string;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v: 1;
}
/**
 * The run ended without an answer.
 */
export interface RunFailed {
  /**
   * When it happened (with an offset).
   */
  at?: string;
  /**
   * Why.
   */
  error: string;
  /**
   * Steps dead-lettered.
   *
   * Items: An identifier: letters, digits, '_' or '-'.
   */
  failed_step_ids?: string[];
  /**
   * Event kind, also the last subject token.
   */
  kind: "failed";
  /**
   * Sub-agents whose final turn did not succeed, when the step phase ended.
   */
  missing_agents?: MissingAgent[];
  /**
   * The run.
   */
  run_id: string;
  /**
   * Totals, when the run got that far.
   */
  summary?: RunSummary | null;
  /**
   * Tenant of the run.
   */
  tenant: string;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v: 1;
}
/**
 * A client asks to cancel the run.
 */
export interface RunCancelRequested {
  /**
   * When it happened (with an offset).
   */
  at?: string;
  /**
   * Event kind, also the last subject token.
   */
  kind: "cancel";
  /**
   * Why.
   */
  reason?: string;
  /**
   * The run.
   */
  run_id: string;
  /**
   * Tenant of the run.
   */
  tenant: string;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v: 1;
}
/**
 * The run was cancelled: queued steps were dropped.
 */
export interface RunCancelled {
  /**
   * When it happened (with an offset).
   */
  at?: string;
  /**
   * Event kind, also the last subject token.
   */
  kind: "cancelled";
  /**
   * Why.
   */
  reason: string;
  /**
   * The run.
   */
  run_id: string;
  /**
   * Tenant of the run.
   */
  tenant: string;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v: 1;
}
/**
 * A ready step on a worker pool's queue: everything a stateless worker needs.
 */
export interface StepDispatch {
  agent: AgentSpec;
  /**
   * 1 for the first attempt, then 2, 3, ...
   */
  attempt: number;
  /**
   * When the dispatcher queued it.
   */
  dispatched_at?: string;
  /**
   * The run's goal, as context.
   */
  goal: string;
  /**
   * Outputs of dependencies the dispatcher still holds, inline; the worker reads the others from the outputs bucket.
   */
  inputs?: {
    /**
     * This interface was referenced by `undefined`'s JSON-Schema definition
     * via the `patternProperty` "^[A-Za-z0-9_-]{1,64}$".
     */
    [k: string]: string | undefined;
  };
  /**
   * The agent's committed earlier turns this turn may see, oldest first (by the agent's memory policy); entries in MEMORY_BUCKET that are not named here (a killed attempt's) are never read.
   */
  memory?: MemoryRef[];
  /**
   * Committed earlier turns the policy left out.
   */
  memory_omitted?: number;
  /**
   * Dependencies that failed (quorum policy): their outputs are missing.
   *
   * Items: An identifier: letters, digits, '_' or '-'.
   */
  missing_inputs?: string[];
  /**
   * A retry's backoff: workers hold the step until this time.
   */
  not_before?: string | null;
  /**
   * The run.
   */
  run_id: string;
  /**
   * What this step may still add to its run with the spawn tool (when it has it).
   */
  spawn_budget?: SpawnBudget | null;
  step: StepSpec;
  /**
   * Tenant of the run.
   */
  tenant: string;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v: 1;
}
/**
 * One committed turn of an agent: the attempt of a step that succeeded.
 */
export interface MemoryRef {
  /**
   * The attempt that succeeded.
   */
  attempt: number;
  /**
   * The turn's step.
   */
  step_id: string;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v?: 1;
}
/**
 * Room left under the run's limits, when the step was dispatched.
 */
export interface SpawnBudget {
  /**
   * Agents the run may still add.
   */
  agents: number;
  /**
   * Steps the run may still add.
   */
  steps: number;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v?: 1;
}
/**
 * One transition of one step, as recorded in ClickHouse's step_events.
 */
export interface StepEvent {
  /**
   * The agent.
   */
  agent_id?: string;
  /**
   * When it happened.
   */
  at?: string;
  /**
   * Attempt number.
   */
  attempt?: number;
  /**
   * Free-form attributes (depends_on, spawned, tool, outcome, ...).
   */
  attributes?: {
    [k: string]: string | undefined;
  };
  /**
   * Completion tokens of what ended here.
   */
  completion_tokens?: number;
  /**
   * Duration of what ended here, if anything.
   */
  duration_ms?: number;
  /**
   * Error text for failures.
   */
  error?: string;
  /**
   * Deterministic id; duplicates are dropped.
   */
  event_id: string;
  kind: StepEventKind;
  /**
   * Prompt tokens of what ended here.
   */
  prompt_tokens?: number;
  /**
   * The run.
   */
  run_id: string;
  /**
   * The step.
   */
  step_id: string;
  /**
   * Tenant.
   */
  tenant: string;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v: 1;
  /**
   * Which worker, if any.
   */
  worker_id?: string;
}
/**
 * Several step events in one message: fewer messages, and less per-message work, for busy producers.
 */
export interface StepEventBatch {
  /**
   * The events, each recorded as if published alone.
   *
   * @minItems 1
   * @maxItems 2000
   */
  events: StepEvent[];
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v: 1;
}
/**
 * Several results of one run in one message: what a worker's attempts finished while its last batch
 * was being stored. Each result is applied as if it came alone; a single StepResult is accepted too.
 */
export interface StepResultBatch {
  /**
   * The results.
   *
   * @minItems 1
   * @maxItems 4096
   */
  results: StepResult[];
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v: 1;
}
/**
 * A worker's report on one attempt of one step.
 */
export interface StepResult {
  /**
   * Which attempt this reports.
   */
  attempt: number;
  /**
   * Completion tokens spent.
   */
  completion_tokens?: number;
  /**
   * Why the attempt failed.
   */
  error?: string | null;
  /**
   * The attempt's step events not yet published (started, inference, tool calls): the dispatcher publishes them with its own, saving every step a message of its own.
   *
   * @maxItems 64
   */
  events?: StepEvent[];
  /**
   * When the worker finished the attempt.
   */
  finished_at: string;
  /**
   * The whole output when it is small, so dependents can get it inline (it is in the bucket too).
   */
  output?: string | null;
  /**
   * Key of the output in the outputs bucket (Keys.output).
   */
  output_key?: string | null;
  /**
   * The first characters of the output.
   */
  output_preview?: string;
  /**
   * Prompt tokens spent.
   */
  prompt_tokens?: number;
  /**
   * Whether another attempt may succeed.
   */
  retryable?: boolean;
  /**
   * The run.
   */
  run_id: string;
  /**
   * Agents and steps this step adds to its run (dynamic spawn).
   */
  spawn?: SpawnRequest | null;
  /**
   * When the worker started the attempt.
   */
  started_at: string;
  status: StepStatus;
  /**
   * The step.
   */
  step_id: string;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v?: 1;
  /**
   * Which worker ran it.
   */
  worker_id: string;
}
/**
 * Steps (and agents) a running step adds to its run.
 *
 * New steps run after the spawning step; steps that depended on the spawning step also wait
 * for the new steps, so the DAG grows in place. Depends_on may name existing or new steps.
 */
export interface SpawnRequest {
  /**
   * New agents (ids unique in the run).
   */
  agents?: AgentSpec[];
  /**
   * New steps (ids unique in the run).
   *
   * @minItems 1
   */
  steps: StepSpec[];
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v?: 1;
}
export interface TaskSubmission2 {
  /**
   * What the swarm must achieve (decomposed by the planner); not blank.
   */
  goal?: string | null;
  /**
   * Free-form labels, recorded with the run.
   */
  labels?: {
    [k: string]: string | undefined;
  };
  /**
   * Preferred number of sub-agents.
   */
  n_agents?: number | null;
  /**
   * Ask the planner for this pattern template.
   */
  pattern?: PlanPattern | null;
  /**
   * An explicit plan; when given, the planner only validates it.
   */
  plan?: Plan | null;
  /**
   * An explicit plan stored in the object store (for plans over 256 KiB of JSON); instead of `plan`, never with it.
   */
  plan_ref?: PlanRef | null;
  policy?: RunPolicy;
  /**
   * Higher runs are scheduled first.
   */
  priority?: number;
  /**
   * Fraction of sub-agents whose final turn must succeed (quorum policy).
   */
  quorum?: number;
  /**
   * Run id chosen by the client, used once; the Nats-Msg-Id header must carry the same value.
   */
  run_id: string;
  /**
   * When the client submitted the task (with an offset); recorded with the run.
   */
  submitted_at?: string;
  /**
   * Tenant the run belongs to: the subject's tenant token (the planner fills it in when absent).
   */
  tenant?: string;
  /**
   * Contract version of this message (CONTRACT_VERSION).
   */
  v: 1;
}
