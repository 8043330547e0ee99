// Plans too large for a message travel by reference (proto/README.md, "Plans too large for a message"): the
// plan's JSON is an object of the object store `swarm_plans` named by its SHA-256, and the task (or the
// `planned` event) carries `plan_ref: {sha256, size}` instead of `plan`.
import { createHash } from "node:crypto";

import type { JetStreamClient } from "@nats-io/jetstream";
import { Objm, type ObjectStore } from "@nats-io/obj";

import { PLAN_INLINE_MAX_BYTES, PLANS_STORE } from "./generated/channels.js";
import type { Plan, PlanRef, RunPlanned } from "./generated/types.js";
import { planReasons } from "./validation.js";

export { PLAN_INLINE_MAX_BYTES, PLANS_STORE }; // generated from proto/ (asyncapi.json's info)

/** The name of a plan's object: its content digest, so a reference cannot be ambiguous. */
export function planObjectName(sha256: string): string {
  return `plan-sha256-${sha256}`;
}

/** The JSON bytes a plan is sent, stored and digested as. */
export function planBytes(plan: Plan): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(plan));
}

/** The reference of a plan's JSON bytes. */
export function planRefOf(data: Uint8Array): PlanRef {
  return { sha256: createHash("sha256").update(data).digest("hex"), size: data.length };
}

/** A plan reference that cannot be honoured: no such object, a size or digest that does not match, or not a plan. */
export class PlanUnavailable extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PlanUnavailable";
  }
}

// Plans are read once per client (a run's follower and its submitter often share one): a few are kept.
const CACHE_SIZE = 32;

/** Stores and reads plans in `swarm_plans`, as the Python SDK's PlanStore does. */
export class PlanStore {
  private store: Promise<ObjectStore> | undefined;
  private readonly cache = new Map<string, Plan>();

  constructor(private readonly js: JetStreamClient) {}

  /** Store a plan (idempotent: the same plan is the same object) and return its reference. */
  async put(plan: Plan): Promise<PlanRef> {
    const data = planBytes(plan);
    const ref = planRefOf(data);
    const store = await this.objects();
    const name = planObjectName(ref.sha256);
    const info = await store.info(name);
    // Already there (a retried submission, or the same plan again): its name is its digest.
    if (!info || info.deleted || info.size !== ref.size) await store.putBlob({ name }, data);
    this.remember(ref, plan);
    return ref;
  }

  /** The plan a reference names, its size and digest checked; throws PlanUnavailable. */
  async get(ref: PlanRef): Promise<Plan> {
    const cached = this.cache.get(ref.sha256);
    if (cached) return cached;
    const name = planObjectName(ref.sha256);
    const store = await this.objects();
    const info = await store.info(name);
    if (!info || info.deleted) throw new PlanUnavailable(`no plan ${name} in the object store ${PLANS_STORE}`);
    // Checked before reading: a forged reference cannot make us read a gigabyte.
    if (info.size !== ref.size) throw new PlanUnavailable(`plan ${name} is ${info.size} bytes, not the ${ref.size} its reference says`);
    const data = await store.getBlob(name);
    if (!data) throw new PlanUnavailable(`no plan ${name} in the object store ${PLANS_STORE}`);
    if (planRefOf(data).sha256 !== ref.sha256) throw new PlanUnavailable(`plan ${name} does not match its digest (replaced or corrupted)`);
    let plan: unknown;
    try {
      plan = JSON.parse(new TextDecoder().decode(data));
    } catch (error) {
      throw new PlanUnavailable(`the object of plan ${name} is not JSON: ${String(error)}`);
    }
    const reasons = planReasons(plan);
    if (reasons.length) throw new PlanUnavailable(`the object of plan ${name} is not a plan: ${JSON.stringify(reasons)}`);
    this.remember(ref, plan as Plan);
    return plan as Plan;
  }

  /** The planned event with its plan inline (and its `plan_ref` kept); one with an inline plan as it is. */
  async resolved(planned: RunPlanned): Promise<RunPlanned> {
    if (planned.plan || !planned.plan_ref) return planned;
    return { ...planned, plan: await this.get(planned.plan_ref) };
  }

  private objects(): Promise<ObjectStore> {
    if (!this.store) {
      this.store = new Objm(this.js).open(PLANS_STORE);
      this.store.catch(() => (this.store = undefined)); // not there yet (no stack): try again next time
    }
    return this.store;
  }

  private remember(ref: PlanRef, plan: Plan): void {
    this.cache.delete(ref.sha256);
    this.cache.set(ref.sha256, plan);
    while (this.cache.size > CACHE_SIZE) this.cache.delete(this.cache.keys().next().value as string);
  }
}
