// Generated from proto/ by `npm run generate` (run by `make proto`); do not edit.

/** Contract version every message carries as `v`. */
export const CONTRACT_VERSION = 1 as const;

/** NATS' max_payload, the limit of every message (contracts.MESSAGE_MAX_BYTES). */
export const MESSAGE_MAX_BYTES = 1048576;
/** A plan whose JSON is larger goes by reference (contracts.PLAN_INLINE_MAX_BYTES). */
export const PLAN_INLINE_MAX_BYTES = 262144;
/** The most a plan stored by reference may weigh (contracts.PLAN_REF_MAX_BYTES). */
export const PLAN_REF_MAX_BYTES = 67108864;
/** The object store of plans by reference (contracts.PLANS_STORE). */
export const PLANS_STORE = "swarm_plans";

/** Every channel: its subject pattern ({placeholders} filled by the sender) and its JetStream stream. */
export const CHANNELS = {
  eventsInference: { address: "swarm.events.inference", stream: "EVENTS" },
  eventsInferencebatch: { address: "swarm.events.inferencebatch", stream: "EVENTS" },
  eventsStep: { address: "swarm.events.step.{tenant}.{run_id}", stream: "EVENTS" },
  eventsStepbatch: { address: "swarm.events.stepbatch.{tenant}.{run_id}", stream: "EVENTS" },
  inferCancel: { address: "swarm.infer.cancel", stream: null },
  inferRequest: { address: "swarm.infer.request", stream: null },
  replyInbox: { address: "{reply_inbox}", stream: null },
  results: { address: "swarm.results.{partition}.{tenant}.{run_id}", stream: "RESULTS" },
  run: { address: "swarm.run.{tenant}.{run_id}.{kind}", stream: "RUNS" },
  steps: { address: "swarm.steps.{pool}", stream: "STEPS" },
  tasks: { address: "swarm.tasks.{tenant}", stream: "TASKS" },
} as const;
