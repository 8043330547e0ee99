// The contract from a second language, without a server: proto/ compiles in ajv's strict mode, the generated
// types are current, and local validation gives the reasons the planner gives.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

import Ajv2020Module from "ajv/dist/2020.js";
import addFormatsModule from "ajv-formats";

import { taskReasons, type Reason } from "../src/index.js";
import { PACKAGE_DIR, PROTO_DIR } from "./paths.js";

const schemaFiles = readdirSync(join(PROTO_DIR, "schemas")).filter((f) => f.endsWith(".json")).sort();

test("every schema in proto/ compiles in ajv strict mode, without a warning", () => {
  assert.ok(schemaFiles.length >= 10, `found ${schemaFiles.join(", ")}`);
  for (const file of schemaFiles) {
    const warnings: unknown[] = [];
    const logger = { log: () => {}, warn: (...args: unknown[]) => warnings.push(args), error: (...args: unknown[]) => warnings.push(args) };
    // Every strict option on (not ajv's default "log" for types and tuples): anything unknown throws.
    const ajv = new Ajv2020Module.default({ strict: true, strictTypes: true, strictTuples: true, strictRequired: true, logger });
    addFormatsModule.default(ajv);
    const schema = JSON.parse(readFileSync(join(PROTO_DIR, "schemas", file), "utf8"));
    assert.doesNotThrow(() => ajv.compile(schema), file);
    assert.deepEqual(warnings, [], file);
  }
});

test("the generated types and schemas are up to date with proto/", () => {
  // Exits 1, naming the stale files, when `make proto` was not run after a contract change.
  execFileSync(process.execPath, [join(PACKAGE_DIR, "scripts", "generate.mjs"), "--check"], { stdio: "pipe" });
});

const task = { v: 1, run_id: "r1", tenant: "default", goal: "compare" };
const codes = (reasons: Reason[]) => reasons.map((r) => [r.path, r.code]);

test("a valid task has no reasons; a naive time, a blank goal, no goal or plan each have theirs", () => {
  assert.deepEqual(taskReasons(task), []);
  assert.deepEqual(taskReasons({ ...task, submitted_at: "2025-01-01T00:00:00Z" }), []);
  assert.deepEqual(codes(taskReasons({ ...task, submitted_at: "2025-01-01T00:00:00" })), [["/submitted_at", "format"]]);
  assert.deepEqual(codes(taskReasons({ ...task, goal: "  " })), [["/goal", "pattern"]]);
  assert.deepEqual(codes(taskReasons({ v: 1, run_id: "r1" })), [["", "anyOf"]]);
  assert.deepEqual(codes(taskReasons({ run_id: "r1", goal: "x" })), [["/v", "required"]]);
  assert.deepEqual(codes(taskReasons({ ...task, bogus: 1, priority: "high" })), [
    ["/bogus", "additionalProperties"],
    ["/priority", "type"],
  ]);
});

test("counts are in the schema", () => {
  const steps = [{ id: "s", agent_id: "a", instruction: "x", depends_on: Array.from({ length: 501 }, (_, i) => `d${i}`) }];
  const plan = { agents: [{ id: "a", role: "r" }], steps };
  assert.deepEqual(codes(taskReasons({ ...task, goal: null, plan })), [["/plan/steps/0/depends_on", "maxItems"]]);
});
