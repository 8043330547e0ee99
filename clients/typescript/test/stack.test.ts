// The contract against a real stack (nats-server and every service, sim backend), from TypeScript.
// SWARM_NATS_URL names the stack's NATS server (tests/e2e/test_typescript_client.py starts one and runs this).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { crc32 } from "node:zlib";

import { Objm } from "@nats-io/obj";

import {
  PLAN_INLINE_MAX_BYTES,
  PLANS_STORE,
  PlanUnavailable,
  SwarmClient,
  planBytes,
  planObjectName,
  planRefOf,
  taskReasons,
  type Plan,
  type Reason,
  type RunEvent,
  type RunRejected,
} from "../src/index.js";

const url = process.env.SWARM_NATS_URL;
if (!url) throw new Error("SWARM_NATS_URL must name a running Swarm stack (see tests/e2e/test_typescript_client.py)");

let client: SwarmClient;
const invalid: Array<[string, Reason[]]> = [];
const follow = { timeoutMs: 60_000, onInvalid: (subject: string, reasons: Reason[]) => invalid.push([subject, reasons]) };

before(async () => {
  client = await SwarmClient.connect({ servers: url, name: "ts-client-test" });
});

after(async () => {
  await client.close();
  assert.deepEqual(invalid, [], "every event on the followed runs is a valid RunEvent");
});

function chain(length: number, latencyMs = 0): Plan {
  return {
    agents: [{ id: "a", role: "researcher" }, { id: "lead", role: "editor" }],
    steps: Array.from({ length }, (_, i) => ({
      id: `s${i}`,
      agent_id: i === length - 1 ? "lead" : "a",
      instruction: `Part ${i} of the question.`,
      depends_on: i === 0 ? [] : [`s${i - 1}`],
      ...(latencyMs ? { sim_latency_ms: latencyMs } : {}),
    })),
  };
}

async function events(runId: string): Promise<RunEvent[]> {
  const seen: RunEvent[] = [];
  for await (const event of client.follow(runId, follow)) seen.push(event);
  return seen;
}

async function rejection(runId: string): Promise<RunRejected> {
  const final = await client.wait(runId, follow);
  assert.equal(final.kind, "rejected", JSON.stringify(final));
  return final as RunRejected;
}

const pairs = (reasons: Reason[] | undefined) => (reasons ?? []).map((r) => [r.path, r.code]);

test("submit a plan and follow it to its answer", async () => {
  const { runId, duplicate } = await client.submit({ plan: chain(3), labels: { from: "typescript" } });
  assert.equal(duplicate, false);
  const seen = await events(runId);
  const kinds = seen.map((e) => e.kind);
  assert.deepEqual(kinds.slice(0, 2), ["accepted", "planned"], kinds.join());
  assert.equal(kinds.at(-1), "completed", kinds.join());
  const final = seen.at(-1);
  assert.ok(final?.kind === "completed");
  assert.ok(final.answer.trim().length > 0);
  assert.equal(final.summary.steps_succeeded, 3);
});

test("a plan over the inline budget goes by reference, and follow reads it back", async () => {
  // 40 steps of 8,000-character instructions: about 320 KB of JSON, over the 256 KiB a task carries inline.
  const text = "Weigh the evidence on tides, winds and currents, and say what is known. ".repeat(120);
  const plan: Plan = {
    agents: [{ id: "a", role: "researcher" }, { id: "lead", role: "editor" }],
    steps: Array.from({ length: 40 }, (_, i) => ({
      id: `s${i}`,
      agent_id: i === 39 ? "lead" : "a",
      instruction: `Part ${i}. ${text}`.slice(0, 8000),
      depends_on: i === 39 ? Array.from({ length: 39 }, (_, j) => `s${j}`) : [],
    })),
  };
  const sent = planBytes(plan);
  assert.ok(sent.length > PLAN_INLINE_MAX_BYTES, `${sent.length} bytes`);

  const { runId } = await client.submit({ plan });
  // The task named the plan by its digest: the object is in the store, under that name, byte for byte.
  const objects = await new Objm(client.nc).open(PLANS_STORE);
  const stored = await objects.getBlob(planObjectName(planRefOf(sent).sha256));
  assert.deepEqual(stored, sent);

  const seen = await events(runId);
  const planned = seen.find((e) => e.kind === "planned");
  assert.ok(planned?.kind === "planned", seen.map((e) => e.kind).join());
  assert.match(planned.plan_ref?.sha256 ?? "", /^[0-9a-f]{64}$/);
  assert.ok((planned.plan_ref?.size ?? 0) > PLAN_INLINE_MAX_BYTES, JSON.stringify(planned.plan_ref));
  // The planner stores the validated plan (its defaults filled in): what was sent is what it names.
  const resolved = planned.plan;
  assert.ok(resolved, "follow resolved the plan_ref");
  assert.deepEqual(resolved.agents.map(({ id, role }) => ({ id, role })), plan.agents);
  assert.deepEqual(
    resolved.steps.map(({ id, agent_id, instruction, depends_on }) => ({ id, agent_id, instruction, depends_on })),
    plan.steps,
  );
  const final = seen.at(-1);
  assert.ok(final?.kind === "completed", JSON.stringify(final));
  assert.equal(final.summary.steps_succeeded, 40);
});

test("a plan reference to a missing, resized or replaced object is refused", async () => {
  const objects = await new Objm(client.nc).open(PLANS_STORE);
  const data = planBytes(chain(2));
  const missing = { sha256: planRefOf(new TextEncoder().encode(randomUUID())).sha256, size: data.length };
  // A forged object: stored under the digest of other bytes of the same size.
  const other = new Uint8Array(data.length).fill(0x20);
  const forged = planRefOf(other);
  await objects.putBlob({ name: planObjectName(forged.sha256) }, data);
  const genuine = await client.plans.put(chain(2));
  const refusals: Array<[{ sha256: string; size: number }, RegExp]> = [
    [missing, /no plan/],
    [forged, /does not match its digest/],
    [{ ...genuine, size: genuine.size + 1 }, /bytes, not the/],
  ];
  // A client of its own: the one above has the genuine plan cached.
  const reader = await SwarmClient.connect({ servers: url, name: "ts-client-test-reader" });
  try {
    for (const [ref, reason] of refusals) {
      await assert.rejects(reader.plans.get(ref), (e: unknown) => e instanceof PlanUnavailable && reason.test(e.message));
    }
    assert.deepEqual(await reader.plans.get(genuine), chain(2));
  } finally {
    await reader.close();
  }
});

test("a duplicate publish is acknowledged as one and runs once", async () => {
  const runId = `dup-${randomUUID()}`;
  const body = { v: 1, run_id: runId, tenant: client.tenant, plan: chain(2) };
  const first = await client.publishTask(body, { msgId: runId });
  const second = await client.publishTask(body, { msgId: runId });
  assert.equal(first.duplicate, false);
  assert.equal(second.duplicate, true);
  assert.equal(second.seq, first.seq);
  const kinds = (await events(runId)).map((e) => e.kind);
  assert.equal(kinds.filter((k) => k === "planned").length, 1, kinds.join());
  assert.equal(kinds.at(-1), "completed");
});

test("cancel a running run", async () => {
  // Twenty steps one after another: long enough to be cancelled before the end.
  const { runId } = await client.submit({ plan: chain(20, 4000) });
  const seen: string[] = [];
  for await (const event of client.follow(runId, follow)) {
    seen.push(event.kind);
    if (event.kind === "planned") await client.cancel(runId, "changed my mind");
    if (event.kind === "cancelled") assert.equal(event.reason, "changed my mind");
  }
  assert.equal(seen.at(-1), "cancelled", seen.join());
});

test("three malformed tasks, each rejected with a structured reason", async () => {
  const malformed: Array<{ body: Record<string, unknown>; msgId?: string; expected: string[] }> = [
    // A blank goal: a rule the schema states (the same reasons locally, from ajv).
    { body: { v: 1, run_id: `blank-${randomUUID()}`, goal: "   " }, expected: ["/goal", "pattern"] },
    // No Nats-Msg-Id: the one-run-id rule, which no body schema can state.
    { body: { v: 1, run_id: `nomsgid-${randomUUID()}`, goal: "x" }, msgId: "", expected: ["", "msg_id_missing"] },
    // A dependency on a step that does not exist: a plan rule beyond JSON Schema.
    {
      body: { v: 1, run_id: `ghost-${randomUUID()}`, plan: { ...chain(1), steps: [{ id: "s", agent_id: "a", instruction: "x", depends_on: ["ghost"] }] } },
      expected: ["/plan/steps/0/depends_on/0", "unknown_step"],
    },
  ];
  for (const { body, msgId, expected } of malformed) {
    const runId = body.run_id as string;
    await client.publishTask(body, msgId === "" ? {} : { msgId: msgId ?? runId });
    const rejected = await rejection(runId);
    assert.deepEqual(pairs(rejected.reasons), [expected], rejected.error);
    assert.equal(rejected.tenant, client.tenant);
    const local = taskReasons({ ...body, tenant: client.tenant });
    if (expected[1] === "pattern") assert.deepEqual(pairs(local), [expected], "ajv finds what the planner finds");
    else assert.deepEqual(local, [], "beyond the schema: only the planner can tell");
  }
});

test("a time without an offset is rejected, and a later run on the same results partition completes", async () => {
  const naiveId = `naive-${randomUUID()}`;
  await client.publishTask({ v: 1, run_id: naiveId, goal: "x", submitted_at: "2025-01-01T00:00:00" }, { msgId: naiveId });
  const rejected = await rejection(naiveId);
  assert.deepEqual(pairs(rejected.reasons), [["/submitted_at", "format"]], rejected.error);
  // The dispatcher partitions results by crc32(run_id) % 16 (asyncapi.json, parameter `partition`).
  const partition = (id: string) => crc32(id) % 16;
  let nextId = `after-${randomUUID()}`;
  while (partition(nextId) !== partition(naiveId)) nextId = `after-${randomUUID()}`;
  const { runId } = await client.submit({ run_id: nextId, plan: chain(2) });
  const final = await client.wait(runId, follow);
  assert.equal(final.kind, "completed", JSON.stringify(final));
});
