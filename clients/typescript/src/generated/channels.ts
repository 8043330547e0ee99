// Generated from proto/ by `npm run generate` (run by `make proto`); do not edit.

/** Contract version every message carries as `v`. */
export const CONTRACT_VERSION = 1 as const;

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
