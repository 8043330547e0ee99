// Validation against the contract's own JSON Schemas, with ajv in strict mode: what the planner checks first,
// with the same `{path, code, message}` reasons a RunRejected carries.
import Ajv2020Module from "ajv/dist/2020.js";
import type { ErrorObject, ValidateFunction } from "ajv";
import addFormatsModule from "ajv-formats";

import { RunEventSchema, TaskSubmissionSchema } from "./generated/schemas.js";
import type { Plan, RunEvent, TaskSubmission } from "./generated/types.js";

// ajv and ajv-formats are CommonJS modules whose export is also their `default`.
const Ajv2020 = Ajv2020Module.default;
const addFormats = addFormatsModule.default;
export type Ajv = InstanceType<typeof Ajv2020>;

/** One reason a message breaks the contract: the shape of a RunRejected's `reasons` entries. */
export interface Reason {
  /** JSON Pointer into the message; "" for the message as a whole. */
  path: string;
  /** The JSON Schema keyword it breaks (as ajv names it), or a rule of the contract's own. */
  code: string;
  /** The reason in words. */
  message: string;
}

/** An ajv instance in strict mode with the formats (date-time, ...) the schemas use. */
export function strictAjv(): Ajv {
  const ajv = new Ajv2020({ strict: true, allErrors: true });
  addFormats(ajv);
  return ajv;
}

let validators:
  | { task: ValidateFunction<TaskSubmission>; event: ValidateFunction<RunEvent>; plan: ValidateFunction<Plan> }
  | undefined;

function compiled() {
  if (!validators) {
    const ajv = strictAjv();
    validators = {
      task: ajv.compile<TaskSubmission>(TaskSubmissionSchema),
      event: ajv.compile<RunEvent>(RunEventSchema),
      // A plan read by reference: the Plan of the event schema just compiled (registered under its $id).
      plan: ajv.compile<Plan>({ $ref: `${RunEventSchema.$id}#/$defs/Plan` }),
    };
  }
  return validators;
}

/** Why `body` is not a valid TaskSubmission ([] when it is). */
export function taskReasons(body: unknown): Reason[] {
  const validate = compiled().task;
  return validate(body) ? [] : reasonsOf(validate.errors ?? []);
}

/** Why `body` is not a valid RunEvent ([] when it is). */
export function eventReasons(body: unknown): Reason[] {
  const validate = compiled().event;
  return validate(body) ? [] : reasonsOf(validate.errors ?? []);
}

/** Why `body` is not a valid Plan ([] when it is). */
export function planReasons(body: unknown): Reason[] {
  const validate = compiled().plan;
  return validate(body) ? [] : reasonsOf(validate.errors ?? []);
}

function escape(token: string): string {
  return token.replaceAll("~", "~0").replaceAll("/", "~1");
}

/**
 * ajv's errors as reasons, the way the planner reports them: the path points at the missing or unknown
 * property itself; a nullable field's "must be null" branch and its anyOf are left out; the task's root
 * anyOf ("a goal or a plan") stands for its branches. Sorted by path and code, one per (path, code).
 */
export function reasonsOf(errors: ErrorObject[]): Reason[] {
  const rootAnyOf = errors.some((e) => e.keyword === "anyOf" && e.instancePath === "" && e.schemaPath === "#/anyOf");
  const found = new Map<string, Reason>();
  for (const error of errors) {
    if (rootAnyOf && error.schemaPath.startsWith("#/anyOf/")) continue;
    if (error.keyword === "anyOf" && !(error.instancePath === "" && error.schemaPath === "#/anyOf")) continue;
    if (error.keyword === "type" && error.params.type === "null") continue;
    let path = error.instancePath;
    if (error.keyword === "required") path += `/${escape(String(error.params.missingProperty))}`;
    if (error.keyword === "additionalProperties") path += `/${escape(String(error.params.additionalProperty))}`;
    const code = error.keyword;
    const key = `${path}\u0000${code}`;
    if (!found.has(key)) found.set(key, { path, code, message: error.message ?? code });
  }
  return [...found.values()].sort((a, b) => (a.path === b.path ? cmp(a.code, b.code) : cmp(a.path, b.path)));
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
