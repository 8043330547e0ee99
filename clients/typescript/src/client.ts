// A small typed client of Swarm over NATS JetStream: submit a task, follow its run, cancel it.
import { randomUUID } from "node:crypto";

import { connect, type NatsConnection, type NodeConnectionOptions } from "@nats-io/transport-node";
import { DeliverPolicy, jetstream, type JetStreamClient, type PubAck } from "@nats-io/jetstream";

import { CHANNELS, CONTRACT_VERSION } from "./generated/channels.js";
import type {
  RunCancelled,
  RunCancelRequested,
  RunCompleted,
  RunEvent,
  RunFailed,
  Plan,
  PlanRef,
  RunRejected,
  TaskSubmission,
} from "./generated/types.js";
import { PLAN_INLINE_MAX_BYTES, PlanStore, PlanUnavailable, planBytes } from "./plans.js";
import { eventReasons, taskReasons, type Reason } from "./validation.js";

export const DEFAULT_TENANT = "default";

/** The kinds that end a run: the last event a follower sees. */
export const TERMINAL_KINDS = ["rejected", "completed", "failed", "cancelled"] as const satisfies readonly RunEvent["kind"][];
export type TerminalEvent = RunRejected | RunCompleted | RunFailed | RunCancelled;

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** What `submit` takes: a task without its envelope (`v`, `tenant`); `run_id` is generated when absent. */
export type TaskInput = DistributiveOmit<TaskSubmission, "v" | "tenant" | "run_id"> & { run_id?: string };

/** A published task. */
export interface Submitted {
  runId: string;
  /** The stream already held this run id within its duplicate window: nothing new was submitted. */
  duplicate: boolean;
}

/** A task the contract rejects, found before publishing it. */
export class TaskInvalid extends Error {
  constructor(readonly reasons: Reason[]) {
    super(`invalid task: ${reasons.map((r) => `${r.path || "(message)"}: ${r.message}`).join("; ")}`);
    this.name = "TaskInvalid";
  }
}

export interface FollowOptions {
  /** Give up (throw) after this long without the run ending. */
  timeoutMs?: number;
  /** Called for a message on the run's subject that is not a valid RunEvent; it is skipped either way. */
  onInvalid?: (subject: string, reasons: Reason[]) => void;
  /** Called when a planned event's `plan_ref` cannot be read; the event is yielded without its plan. */
  onPlanUnavailable?: (runId: string, error: PlanUnavailable) => void;
}

export interface ConnectOptions extends NodeConnectionOptions {
  /** The tenant whose subjects this client publishes and follows on. */
  tenant?: string;
}

/** Fill a channel address's {placeholders}. */
export function subject(address: string, values: Record<string, string>): string {
  return address.replace(/\{([a-z_]+)\}/g, (_, name: string) => {
    const value = values[name];
    if (value === undefined) throw new Error(`no value for {${name}} in ${address}`);
    return value;
  });
}

export function isTerminal(event: RunEvent): event is TerminalEvent {
  return (TERMINAL_KINDS as readonly string[]).includes(event.kind);
}

export class SwarmClient {
  private readonly js: JetStreamClient;
  /** Plans by reference in the object store `swarm_plans`. */
  readonly plans: PlanStore;

  private constructor(
    readonly nc: NatsConnection,
    readonly tenant: string,
  ) {
    this.js = jetstream(nc);
    this.plans = new PlanStore(this.js);
  }

  /** Connect to NATS (default nats://127.0.0.1:4222, the local stack). */
  static async connect(options: ConnectOptions = {}): Promise<SwarmClient> {
    const { tenant = DEFAULT_TENANT, ...natsOptions } = options;
    const nc = await connect({ servers: "nats://127.0.0.1:4222", ...natsOptions });
    return new SwarmClient(nc, tenant);
  }

  /**
   * Validate a task against the contract, then publish it with `Nats-Msg-Id` = its run id. A plan whose JSON
   * is over PLAN_INLINE_MAX_BYTES is stored in the object store `swarm_plans` first and sent as `plan_ref`.
   */
  async submit(task: TaskInput): Promise<Submitted> {
    const runId = task.run_id ?? randomUUID();
    let body: Record<string, unknown> = {
      v: CONTRACT_VERSION,
      submitted_at: new Date().toISOString(),
      ...task,
      run_id: runId,
      tenant: this.tenant,
    };
    const reasons = taskReasons(body);
    if (reasons.length) throw new TaskInvalid(reasons);
    const plan = body.plan as Plan | null | undefined;
    if (plan && planBytes(plan).length > PLAN_INLINE_MAX_BYTES) {
      const { plan: _inline, ...rest } = body;
      body = { ...rest, plan_ref: (await this.plans.put(plan)) satisfies PlanRef };
      const refReasons = taskReasons(body); // e.g. a plan over the 64 MiB a reference may name
      if (refReasons.length) throw new TaskInvalid(refReasons);
    }
    const ack = await this.publishTask(body, { msgId: runId });
    return { runId, duplicate: ack.duplicate };
  }

  /**
   * Publish a task body as given, without validating it: for clients that build bodies themselves (and for
   * tests of what the planner rejects). `msgId` becomes the `Nats-Msg-Id` header; the contract requires it.
   */
  async publishTask(body: unknown, options: { msgId?: string } = {}): Promise<PubAck> {
    const payload = body instanceof Uint8Array || typeof body === "string" ? body : JSON.stringify(body);
    const publish = options.msgId === undefined ? {} : { msgID: options.msgId };
    return this.js.publish(subject(CHANNELS.tasks.address, { tenant: this.tenant }), payload, publish);
  }

  /**
   * Every event of a run, from its first (events published before the call are not missed) to its terminal
   * one. Each is checked against the RunEvent schema; what is not a RunEvent is skipped. A `planned` event
   * whose plan went by reference is yielded with its `plan` read from `swarm_plans` (digest checked) and
   * its `plan_ref` kept.
   */
  async *follow(runId: string, options: FollowOptions = {}): AsyncGenerator<RunEvent> {
    const filter = subject(CHANNELS.run.address, { tenant: this.tenant, run_id: runId, kind: ">" });
    const consumer = await this.js.consumers.get(CHANNELS.run.stream, {
      filter_subjects: filter,
      deliver_policy: DeliverPolicy.All,
    });
    const messages = await consumer.consume();
    let timedOut = false;
    const timer =
      options.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true;
            void messages.close();
          }, options.timeoutMs);
    const onInvalid =
      options.onInvalid ?? ((s: string, r: Reason[]) => console.warn(`skipped a message on ${s}: ${JSON.stringify(r)}`));
    try {
      for await (const msg of messages) {
        let body: unknown;
        try {
          body = msg.json();
        } catch (error) {
          onInvalid(msg.subject, [{ path: "", code: "json", message: String(error) }]);
          continue;
        }
        const reasons = eventReasons(body);
        if (reasons.length) {
          onInvalid(msg.subject, reasons);
          continue;
        }
        let event = body as RunEvent;
        if (event.kind === "planned" && !event.plan && event.plan_ref) {
          try {
            event = await this.plans.resolved(event);
          } catch (error) {
            if (!(error instanceof PlanUnavailable)) throw error;
            (options.onPlanUnavailable ?? ((id, e) => console.warn(`run ${id}: the plan could not be read: ${e.message}`)))(runId, error);
          }
        }
        yield event;
        if (isTerminal(event)) return;
      }
      if (timedOut) throw new Error(`run ${runId}: no terminal event within ${options.timeoutMs} ms`);
    } finally {
      clearTimeout(timer);
      await messages.close();
    }
  }

  /** The terminal event of a run. */
  async wait(runId: string, options: FollowOptions = {}): Promise<TerminalEvent> {
    for await (const event of this.follow(runId, options)) {
      if (isTerminal(event)) return event;
    }
    throw new Error(`run ${runId}: the event stream ended without a terminal event`);
  }

  /** Ask the dispatcher to cancel a run. */
  async cancel(runId: string, reason = "cancelled by client"): Promise<void> {
    const request: RunCancelRequested = {
      v: CONTRACT_VERSION,
      kind: "cancel",
      run_id: runId,
      tenant: this.tenant,
      reason,
      at: new Date().toISOString(),
    };
    await this.js.publish(subject(CHANNELS.run.address, { tenant: this.tenant, run_id: runId, kind: "cancel" }), JSON.stringify(request));
  }

  async close(): Promise<void> {
    await this.nc.drain();
  }
}
