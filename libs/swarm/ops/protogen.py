"""Generate `proto/` (JSON Schema per message, an AsyncAPI 3 document, a README) from the contracts.

`python -m swarm.ops.protogen` rewrites proto/; `python -m swarm.ops.protogen --check` changes nothing and
exits 1, listing what differs, when proto/ is out of date. Output is deterministic: sorted keys,
fixed ordering, a trailing newline, no timestamps.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from swarm import contracts
from swarm.contracts import (
    CHANNELS,
    CONTRACT_VERSION,
    MESSAGE_BODY_MAX_BYTES,
    TERMINAL_RUN_EVENTS,
    Channel,
    RejectionCode,
)
from swarm.schemas import (
    channel_models,
    json_schema,
    model_name,
    schema_file,
    union_members,
)

PROTO_DIR = Path(__file__).resolve().parents[3] / "proto"

# What a client publishes; everything else on a channel is something a client may receive.
CLIENT_SENDS = frozenset({"TaskSubmission", "InferenceRequest", "RunCancelRequested"})

# Subject placeholders and what they stand for.
PARAMETER_DOCS = {
    "tenant": "Tenant id (letters, digits, '_' or '-'); 'default' unless the client chose one.",
    "run_id": "Run id chosen by the client at submission (letters, digits, '_' or '-').",
    "pool": "Worker pool name (letters, digits, '_' or '-'); 'default' unless configured.",
    "kind": "The run event's 'kind' field.",
    "partition": "Results partition of the run: crc32(run_id) modulo RESULT_PARTITIONS (16).",
    "reply_inbox": "The reply subject the requester set on its request (an inbox of its own).",
}

_PLACEHOLDER_RE = re.compile(r"\{([a-z_]+)\}")


# --------------------------------------------------------------------------- AsyncAPI


def component_schemas(models: dict[str, Any]) -> dict[str, Any]:
    """Every schema the messages need, flat, referenced as #/components/schemas/<Name>."""
    schemas: dict[str, Any] = {}

    def add(name: str, schema: dict[str, Any]) -> None:
        if name in schemas and schemas[name] != schema:
            raise ValueError(f"two different schemas are both named {name!r}")
        schemas[name] = schema

    for name, model in models.items():
        schema = json_schema(model, ref_template="#/components/schemas/{model}")
        for def_name, definition in schema.pop("$defs", {}).items():
            add(def_name, definition)
        add(name, schema)
    return schemas


def channel_id(address: str) -> str:
    """A stable id from a subject pattern: its literal tokens after 'swarm', lowerCamelCase
    ('replyInbox' for an address that is all placeholder: a requester's own inbox)."""
    tokens = [token for token in address.split(".")[1:] if not _PLACEHOLDER_RE.fullmatch(token)]
    if not tokens:
        return "replyInbox"
    return tokens[0] + "".join(token[:1].upper() + token[1:] for token in tokens[1:])


def _message_names(channel: Channel) -> list[str]:
    return union_members(channel.message) or [model_name(channel.message)]


def _docstring(model: Any) -> str:
    return (model.__doc__ or "").strip().splitlines()[0] if isinstance(model, type) else ""


def _message_object(name: str, model: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": name,
        "title": name,
        "contentType": "application/json",
        "payload": {"$ref": f"#/components/schemas/{name}"},
    }
    summary = _docstring(model)
    if summary:
        message["summary"] = summary
    if name == "TaskSubmission":
        message["headers"] = {
            "type": "object",
            "properties": {
                "Nats-Msg-Id": {
                    "type": "string",
                    "pattern": contracts.ID_PATTERN,
                    "description": "Required, equal to the body's run_id: JetStream drops a duplicate submission "
                    f"within the stream's duplicate window ({contracts.TASKS.duplicate_window_s:g} s).",
                }
            },
            "required": ["Nats-Msg-Id"],
        }
    return message


def _parameters(address: str) -> dict[str, Any]:
    parameters: dict[str, Any] = {}
    for placeholder in _PLACEHOLDER_RE.findall(address):
        parameter: dict[str, Any] = {"description": PARAMETER_DOCS[placeholder]}
        if placeholder == "kind":
            parameter["enum"] = _run_event_kinds()
        parameters[placeholder] = parameter
    return parameters


def _run_event_kinds() -> list[str]:
    definitions = json_schema(contracts.RunEvent)["$defs"]
    return sorted(definitions[name]["properties"]["kind"]["const"] for name in union_members(contracts.RunEvent))


def asyncapi(channels: Iterable[Channel] = CHANNELS) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the system, from a client's point of view."""
    channels = tuple(channels)
    models = channel_models(channels)
    schemas = component_schemas(models)

    doc_channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for channel in channels:
        cid = channel_id(channel.address)
        if cid in doc_channels:
            raise ValueError(f"two channels map to the id {cid!r}")
        names = _message_names(channel)
        for name in names:
            messages[name] = _message_object(name, getattr(contracts, name, None))
        description = channel.description
        if channel.stream:
            description += f" Stream: {channel.stream}."
        else:
            description += " Core NATS, no stream."
        doc_channel: dict[str, Any] = {
            "address": channel.address,
            "description": description,
            "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in names},
        }
        if channel.stream:
            doc_channel["x-stream"] = channel.stream
        parameters = _parameters(channel.address)
        if parameters:
            doc_channel["parameters"] = parameters
        doc_channels[cid] = doc_channel

        reply: dict[str, Any] | None = None
        if channel.reply is not None:
            reply_name = model_name(channel.reply)
            reply_cid = f"{cid}Reply"
            messages[reply_name] = _message_object(reply_name, channel.reply)
            doc_channels[reply_cid] = {
                "address": None,
                "description": f"The requester's inbox (the NATS reply subject of a request on '{channel.address}').",
                "messages": {reply_name: {"$ref": f"#/components/messages/{reply_name}"}},
            }
            reply = {
                "channel": {"$ref": f"#/channels/{reply_cid}"},
                "messages": [{"$ref": f"#/channels/{reply_cid}/messages/{reply_name}"}],
            }

        for action in ("send", "receive"):
            selected = [name for name in names if (name in CLIENT_SENDS) == (action == "send")]
            if not selected:
                continue
            operation: dict[str, Any] = {
                "action": action,
                "channel": {"$ref": f"#/channels/{cid}"},
                "messages": [{"$ref": f"#/channels/{cid}/messages/{name}"} for name in selected],
                "summary": f"{'Publish' if action == 'send' else 'Consume'} {', '.join(selected)}.",
            }
            if reply is not None and action == "send":
                operation["reply"] = reply
            operations[f"{action}{cid[:1].upper()}{cid[1:]}"] = operation

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Swarm",
            "version": str(CONTRACT_VERSION),
            "description": "The wire contract of Swarm over NATS JetStream: subjects, streams and "
            "JSON message schemas. Generated from swarm.contracts by `python -m swarm.ops.protogen`.",
            # The byte budgets a client must know (the TypeScript client's are generated from these).
            "x-limits": {
                "message_max_bytes": contracts.MESSAGE_MAX_BYTES,
                "plan_inline_max_bytes": contracts.PLAN_INLINE_MAX_BYTES,
                "plan_ref_max_bytes": contracts.PLAN_REF_MAX_BYTES,
            },
            "x-plans-store": contracts.PLANS_STORE.name,  # the object store of plans by reference
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "The embedded stack started by `swarm up`.",
            }
        },
        "channels": doc_channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


# --------------------------------------------------------------------------- README


# The rules a schema cannot state, each with the code its rejection carries.
REJECTION_RULES: dict[RejectionCode, str] = {
    RejectionCode.JSON: "The body is not JSON (UTF-8).",
    RejectionCode.MSG_ID_MISSING: "The `Nats-Msg-Id` header is missing.",
    RejectionCode.MSG_ID_MISMATCH: "`run_id` differs from the `Nats-Msg-Id` header (path `/run_id`).",
    RejectionCode.TENANT_MISMATCH: "`tenant` differs from the subject's tenant token (path `/tenant`), or the subject "
    "names no tenant (path '').",
    RejectionCode.DUPLICATE_ID: "Two agents, or two steps, share an id (path of the second one's `id`).",
    RejectionCode.UNKNOWN_AGENT: "A step's `agent_id` names no agent of the plan.",
    RejectionCode.UNKNOWN_STEP: "A `depends_on` entry names no step of the plan.",
    RejectionCode.CYCLE: "The steps' `depends_on` form a cycle (path `/plan/steps`), or a step depends on itself.",
    RejectionCode.LIMIT: "Over a limit the operator set lower than the schema's (`SWARM_PLANNER_MAX_AGENTS`, "
    "`_MAX_STEPS`, `_MAX_DEPENDS_ON`).",
    RejectionCode.TOO_LARGE: f"The planned run (RunPlanned) would be over {MESSAGE_BODY_MAX_BYTES:,} bytes of JSON.",
    RejectionCode.PLAN_UNAVAILABLE: "`plan_ref` names no object of the plans store, or one whose size or SHA-256 "
    "differs (path `/plan_ref`).",
    RejectionCode.PLAN_FAILED: "No plan could be made for the goal (path ''); the planner's side, not the task's.",
    RejectionCode.INVALID: "Anything else the model refuses (the message says what).",
}


def _days(seconds: float) -> str:
    return f"{seconds / 86400:g} days"


def readme(channels: Iterable[Channel] = CHANNELS) -> str:
    """proto/README.md: how a client in any language submits a task and follows it, and every rule and limit."""
    channels = tuple(channels)
    rows = []
    for channel in channels:
        names = ", ".join(f"`{name}`" for name in _message_names(channel))
        schema = f"[{model_name(channel.message)}](schemas/{model_name(channel.message)}.json)"
        reply = f" → [{model_name(channel.reply)}](schemas/{model_name(channel.reply)}.json)" if channel.reply else ""
        rows.append(f"| `{channel.address}` | {channel.stream or 'core NATS'} | {schema}{reply} | {names} |")
    table = "\n".join(rows)
    rules = "\n".join(f"| `{code.value}` | {text} |" for code, text in REJECTION_RULES.items())
    task = contracts.Subjects.task("<tenant>")
    follow = contracts.Subjects.run_all("<tenant>", "<run_id>")
    cancel = contracts.Subjects.run_event("<tenant>", "<run_id>", contracts.RunEventKind.CANCEL)
    rejected = contracts.Subjects.run_event("<tenant>", "<run_id>", contracts.RunEventKind.REJECTED)
    terminal = ", ".join(f"`{kind}`" for kind in TERMINAL_RUN_EVENTS)
    window = f"{contracts.TASKS.duplicate_window_s:g} s"
    return f"""# Swarm wire contract

Generated from `libs/swarm/contracts.py` by `python -m swarm.ops.protogen` (`make proto`); do not edit.
A unit test fails when these files drift from the code.

- `asyncapi.json` — AsyncAPI 3.0.0: every channel (subject pattern), its stream and its messages.
- `schemas/<Model>.json` — a JSON Schema (draft 2020-12) per message. Messages are JSON objects;
  unknown fields are rejected; every message carries `"v": {CONTRACT_VERSION}` (the contract version, required).
  The schemas compile in ajv's strict mode (with ajv-formats): a union such as `RunEvent` is a `oneOf`
  whose members each require their own `kind` constant; there is no `discriminator` keyword.
- A typed TypeScript client generated from these schemas lives in [`clients/typescript`](../clients/typescript).

## Submit a task from any NATS client

1. Choose a `run_id` (1-64 of `A-Z a-z 0-9 _ -`), new for every task, and a tenant (`{contracts.DEFAULT_TENANT}` if you
   have none).
2. Publish to JetStream on `{task}` (stream `{contracts.TASKS.name}`) with the header
   `Nats-Msg-Id: <run_id>` and a JSON body valid against
   [schemas/TaskSubmission.json](schemas/TaskSubmission.json). Wait for the PubAck.

```json
{{"v": {CONTRACT_VERSION}, "run_id": "r-0001", "goal": "Compare solar, wind and hydro power"}}
```

The rules:

- **One run id.** The `Nats-Msg-Id` header is required and must equal the body's `run_id`.
- **Tenant.** The subject's tenant token is the run's tenant. The body's `tenant` may be left out (it is then
  the subject's); when given, it must be the same. Events, a rejection included, are published under the
  subject's tenant.
- **A goal or a plan.** A non-blank `goal` (the planner decomposes it), or an explicit `plan` (agents and a step
  DAG, only validated) — or its `plan_ref` when it is large (below) — or both (the goal is then the plan's
  description).
- **Times** carry an offset: `submitted_at` is an RFC 3339 date-time such as `2025-01-01T00:00:00Z` or
  `...+02:00`. A time without one is rejected (code `format`), never guessed. It is recorded with the run.
- Everything a JSON Schema can say (types, lengths, counts, patterns, formats) is in the schema, and the
  planner checks a task against that very schema first, so a local validation predicts its verdict.

## Plans too large for a message: by reference

A plan whose JSON is over {contracts.PLAN_INLINE_MAX_BYTES:,} bytes (a 300-agent, 4,000-step plan with 300-character
instructions is about 2 MB; NATS carries 1 MiB) goes through the object store `{contracts.PLANS_STORE.name}` instead:

1. Serialize the plan (a JSON object valid as `plan` in the TaskSubmission schema) to bytes, and take their
   SHA-256 as lower-case hex.
2. Put those bytes into the object store `{contracts.PLANS_STORE.name}` under the name `plan-sha256-<hex>` (any
   client with JetStream object stores: nats.py `js.object_store("{contracts.PLANS_STORE.name}").put(name, data)`,
   nats.js v3 `await new Objm(nc).open("{contracts.PLANS_STORE.name}")` (package `@nats-io/obj`) then
   `os.putBlob({{name}}, data)`, Go `js.ObjectStore(ctx, "{contracts.PLANS_STORE.name}")` then `PutBytes`).
3. Submit the task with `"plan_ref": {{"sha256": "<hex>", "size": <byte count>}}` instead of `plan`.

```json
{{"v": {CONTRACT_VERSION}, "run_id": "r-0002", "plan_ref": {{"sha256": "9f86d0…", "size": 2045113}}}}
```

The planner reads the object once, checks its size and digest, and validates it exactly as an inline plan
(its reasons point under `/plan`, as if it had been sent inline). A reference to a missing object, or to one
whose size or digest differs, is rejected with code `plan_unavailable` at `/plan_ref`. Objects expire after
{_days(contracts.PLANS_STORE.ttl_s)}. Likewise the `planned` event (`RunPlanned`) of a plan over that size carries
`plan_ref` (and `agents_count`, `steps_count`) instead of `plan`: a follower that needs the steps reads the
object the same way, and checks the digest. The Python SDK (`SwarmClient.submit`, `swarm submit --plan`) does
all of this by itself.

## Duplicates and reused run ids

- Publishing the same `Nats-Msg-Id` again within the `{contracts.TASKS.name}` stream's duplicate window
  ({window}) is a no-op: the PubAck says `duplicate: true` and nothing else happens. Retrying a publish is safe.
- A `run_id` is used once, for good: the run index keeps every run. A task whose run id is already known
  (a re-publish after the window, or another task under a used id) is dropped without any new event;
  following that id shows the first run's events. Choose a fresh id (a UUID) for every task.

## Follow it

Subscribe (an ordered or ephemeral JetStream consumer on stream `{contracts.RUNS.name}`, deliver-all, so
events published before you subscribed are not missed) to `{follow}`. Every message is a
run event ([schemas/RunEvent.json](schemas/RunEvent.json)), told apart by its `kind` field, which is
also the last subject token. The run is over at the first terminal kind: {terminal}.
`completed` carries the `answer` and a `summary`. `{contracts.RUNS.name}` keeps events for
{_days(contracts.RUNS.max_age_s)}; a run older than that can no longer be followed.

To cancel, publish a `cancel` event (`RunCancelRequested`) to `{cancel}`.

## Rejections

A task that breaks a rule is not run: a `RunRejected` event goes to `{rejected}`, where the run id is the
body's `run_id` when it is a valid id, else the `Nats-Msg-Id` header's (so a body that is not even JSON is
still answered under the id you chose), else a generated `rejected-<hex>` that nobody follows (the planner
logs it). It carries `error` (every reason in words, on one line) and `reasons`: a list of up to
{contracts.REJECTION_MAX_REASONS} `{{path, code, message}}` objects, every broken rule at once where they can be found together.

- `path` is a JSON Pointer (RFC 6901) into the body, e.g. `/plan/steps/3/depends_on/0`, pointing at the value
  at fault (for `required` and `additionalProperties`, the missing or unknown property itself); `''` for the
  message as a whole (its bytes, headers or subject).
- `code` is the JSON Schema keyword the value breaks, named as ajv names it (`type`, `required`,
  `additionalProperties`, `pattern`, `format`, `minLength`, `maxLength`, `minItems`, `maxItems`,
  `maxProperties`, `propertyNames`, `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`, `const`,
  `enum`, `anyOf` for "a goal or a plan"), or one of the rules no schema can state:

| code | rejected when |
|---|---|
{rules}

## Limits

| what | limit | broken: code |
|---|---|---|
| one message (any) | the NATS server's `max_payload`, 1 MiB by default | the publish itself fails |
| a plan inline (`plan`, as JSON) | {contracts.PLAN_INLINE_MAX_BYTES:,} bytes advised; over it, send `plan_ref` | the publish fails near 1 MiB |
| a plan by reference (`plan_ref.size`) | {contracts.PLAN_REF_MAX_BYTES:,} bytes | `maximum` |
| the planned run (`RunPlanned`, with its plan by reference when large) | {MESSAGE_BODY_MAX_BYTES:,} bytes | `too_large` |
| agents / steps of a plan | {contracts.PLAN_MAX_AGENTS} / {contracts.PLAN_MAX_STEPS} (`maxItems`) | `maxItems`, or `limit` below that |
| `depends_on` of one step | {contracts.STEP_MAX_DEPENDS_ON} | `maxItems`, or `limit` below that |
| `goal`, `instruction`, `instructions`, `role` | 32,000 / 16,000 / 8,000 / 200 characters | `maxLength` |
| `labels` | {contracts.TASK_MAX_LABELS} entries, keys 1-64 and values up to 1,024 characters | `maxProperties`, `propertyNames`, `maxLength` |
| duplicate window of `{contracts.TASKS.name}` | {window} | a duplicate is dropped |
| retention of `{contracts.RUNS.name}` (run events) | {_days(contracts.RUNS.max_age_s)} | older events are gone |
| reuse of a `run_id` | never (the run index keeps every run) | the task is dropped |

## Channels

| subject | stream | schema | messages |
|---|---|---|---|
{table}
"""


# --------------------------------------------------------------------------- files


def _dump(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """Every file of proto/, by path relative to it, in sorted order."""
    files = {f"schemas/{name}.json": _dump(schema_file(model, name)) for name, model in channel_models().items()}
    files["asyncapi.json"] = _dump(asyncapi())
    files["README.md"] = readme()
    return dict(sorted(files.items()))


def _existing(out_dir: Path) -> set[str]:
    if not out_dir.is_dir():
        return set()
    return {path.relative_to(out_dir).as_posix() for path in out_dir.rglob("*") if path.is_file()}


def drift(out_dir: Path = PROTO_DIR) -> list[str]:
    """What differs between out_dir and freshly generated files: 'missing X', 'differs X', 'extra X'."""
    files = generate()
    problems = []
    for path, content in files.items():
        target = out_dir / path
        if not target.is_file():
            problems.append(f"missing {path}")
        elif target.read_text(encoding="utf-8") != content:
            problems.append(f"differs {path}")
    problems += [f"extra {path}" for path in sorted(_existing(out_dir) - set(files))]
    return problems


def write(out_dir: Path = PROTO_DIR) -> list[str]:
    """Write every generated file into out_dir, remove stale ones; returns the paths written."""
    files = generate()
    for path in sorted(_existing(out_dir) - set(files)):
        (out_dir / path).unlink()
    for path, content in files.items():
        target = out_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    return list(files)


def main(argv: list[str] | None = None) -> int:
    """Command line: write proto/, or check it with --check."""
    parser = argparse.ArgumentParser(prog="python -m swarm.ops.protogen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if proto/ is out of date")
    parser.add_argument("--out", type=Path, default=PROTO_DIR, help="the proto directory (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.check:
        problems = drift(args.out)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(f"{args.out} is out of date: run `make proto`", file=sys.stderr)
            return 1
        return 0
    written = write(args.out)
    print(f"wrote {len(written)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
