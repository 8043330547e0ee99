// Generates src/generated/ from the wire contract in proto/: the message types (json-schema-to-typescript,
// from proto/schemas) and the channels (from proto/asyncapi.json). `--check` writes nothing and exits 1
// when the committed files differ, the way `python -m swarm.protogen --check` guards proto/ itself.
import { readFile, readdir, writeFile, mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { compile } from "json-schema-to-typescript";

const here = dirname(fileURLToPath(import.meta.url));
const PROTO = join(here, "..", "..", "..", "proto");
const OUT = join(here, "..", "src", "generated");
const CLIENT_SCHEMAS = ["TaskSubmission", "RunEvent"];
const BANNER = "// Generated from proto/ by `npm run generate` (run by `make proto`); do not edit.";

/** A schema without the titles pydantic gives every property: they would each become a type alias. */
function untitled(schema) {
  if (Array.isArray(schema)) return schema.map(untitled);
  if (schema === null || typeof schema !== "object") return schema;
  // A $ref with siblings (pydantic adds the field's description and default) would be declared anew as
  // `Plan1`, `RunSummary2`...: the reference alone names the shared type.
  if ("$ref" in schema) return { $ref: schema.$ref };
  return Object.fromEntries(Object.entries(schema).filter(([key]) => key !== "title").map(([k, v]) => [k, untitled(v)]));
}

/** Every message schema of proto/schemas in one document: each message and each shared definition once. */
async function combinedSchema() {
  const files = (await readdir(join(PROTO, "schemas"))).filter((f) => f.endsWith(".json")).sort();
  const defs = {};
  const add = (name, schema) => {
    if (name in defs && JSON.stringify(defs[name]) !== JSON.stringify({ ...untitled(schema), title: name })) {
      throw new Error(`two different schemas are both named ${name}`);
    }
    defs[name] = { ...untitled(schema), title: name };
  };
  const messages = [];
  for (const file of files) {
    const { $defs = {}, $schema, $id, ...root } = JSON.parse(await readFile(join(PROTO, "schemas", file), "utf8"));
    for (const [name, schema] of Object.entries($defs)) add(name, schema);
    add(root.title, root);
    messages.push(root.title);
  }
  return {
    title: "SwarmMessage",
    description: "Any message of the contract.",
    anyOf: messages.map((name) => ({ $ref: `#/$defs/${name}` })),
    $defs: defs,
  };
}

async function types() {
  return compile(await combinedSchema(), "SwarmMessage", {
    bannerComment: BANNER,
    additionalProperties: false,
    ignoreMinAndMaxItems: true, // tuples of up to 4,000 items would be unreadable; ajv checks the counts
    unreachableDefinitions: true,
    strictIndexSignatures: true,
    cwd: join(PROTO, "schemas"),
  });
}

async function channels() {
  const asyncapi = JSON.parse(await readFile(join(PROTO, "asyncapi.json"), "utf8"));
  const entries = Object.entries(asyncapi.channels)
    .filter(([, channel]) => channel.address)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([id, channel]) => `  ${id}: { address: ${JSON.stringify(channel.address)}, stream: ${JSON.stringify(channel["x-stream"] ?? null)} },`);
  return [
    BANNER,
    "",
    "/** Contract version every message carries as `v`. */",
    `export const CONTRACT_VERSION = ${Number(asyncapi.info.version)} as const;`,
    "",
    "/** NATS' max_payload, the limit of every message (contracts.MESSAGE_MAX_BYTES). */",
    `export const MESSAGE_MAX_BYTES = ${Number(asyncapi.info["x-limits"].message_max_bytes)};`,
    "/** A plan whose JSON is larger goes by reference (contracts.PLAN_INLINE_MAX_BYTES). */",
    `export const PLAN_INLINE_MAX_BYTES = ${Number(asyncapi.info["x-limits"].plan_inline_max_bytes)};`,
    "/** The most a plan stored by reference may weigh (contracts.PLAN_REF_MAX_BYTES). */",
    `export const PLAN_REF_MAX_BYTES = ${Number(asyncapi.info["x-limits"].plan_ref_max_bytes)};`,
    "/** The object store of plans by reference (contracts.PLANS_STORE). */",
    `export const PLANS_STORE = ${JSON.stringify(asyncapi.info["x-plans-store"])};`,
    "",
    "/** Every channel: its subject pattern ({placeholders} filled by the sender) and its JetStream stream. */",
    "export const CHANNELS = {",
    ...entries,
    "} as const;",
    "",
  ].join("\n");
}

/** The schemas the client validates with at run time, embedded so the package needs no proto/ beside it. */
async function schemas() {
  const lines = [BANNER, ""];
  for (const name of CLIENT_SCHEMAS) {
    const schema = await readFile(join(PROTO, "schemas", `${name}.json`), "utf8");
    lines.push(`export const ${name}Schema = ${schema.trimEnd()} as const;`, "");
  }
  return lines.join("\n");
}

async function main() {
  const check = process.argv.includes("--check");
  const files = { "types.ts": await types(), "channels.ts": await channels(), "schemas.ts": await schemas() };
  const differ = [];
  for (const [name, content] of Object.entries(files)) {
    const path = join(OUT, name);
    const existing = await readFile(path, "utf8").catch(() => null);
    if (existing === content) continue;
    if (check) differ.push(name);
    else {
      await mkdir(OUT, { recursive: true });
      await writeFile(path, content);
      console.log(`wrote ${path}`);
    }
  }
  if (differ.length) {
    console.error(`clients/typescript/src/generated is out of date (${differ.join(", ")}): run \`make proto\``);
    process.exit(1);
  }
}

await main();
