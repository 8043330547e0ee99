"""Generate `proto/` (JSON Schema per message, an AsyncAPI 3 document, a README) from the contracts.

`python -m swarm.protogen` rewrites proto/; `python -m swarm.protogen --check` changes nothing and
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

from pydantic import TypeAdapter

from swarm import contracts
from swarm.contracts import CHANNELS, CONTRACT_VERSION, TERMINAL_RUN_EVENTS, Channel

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

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


# --------------------------------------------------------------------------- models


def model_name(model: Any) -> str:
    """The public name of a message model: the class name, or the contracts alias of a union."""
    if isinstance(model, type):
        return model.__name__
    for name, value in vars(contracts).items():
        if value is model:
            return name
    raise ValueError(f"{model!r} is not named in swarm.contracts")


def channel_models(channels: Iterable[Channel] = CHANNELS) -> dict[str, Any]:
    """Every message and reply model of the channels, by name, in registry order."""
    models: dict[str, Any] = {}
    for channel in channels:
        for model in (channel.message, channel.reply):
            if model is not None:
                models.setdefault(model_name(model), model)
    return models


def json_schema(model: Any, ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """The validation JSON Schema of a model or union (what a message must look like to be accepted)."""
    return TypeAdapter(model).json_schema(ref_template=ref_template)


def schema_file(model: Any, name: str) -> dict[str, Any]:
    """A standalone JSON Schema document for one message model."""
    schema = json_schema(model)
    schema["$schema"] = JSON_SCHEMA_DIALECT
    schema["$id"] = f"{name}.json"
    schema.setdefault("title", name)
    return schema


def union_members(model: Any) -> list[str]:
    """The member names of a discriminated union's schema, in declaration order; [] for a plain model."""
    schema = json_schema(model)
    refs = [option["$ref"] for option in schema.get("oneOf", []) if "$ref" in option]
    return [ref.rsplit("/", 1)[-1] for ref in refs]


# --------------------------------------------------------------------------- AsyncAPI


def _asyncapi_schema(schema: Any) -> Any:
    """Adapt pydantic's JSON Schema to AsyncAPI's Schema Object, whose `discriminator` is a property name."""
    if isinstance(schema, dict):
        adapted = {key: _asyncapi_schema(value) for key, value in schema.items()}
        discriminator = adapted.get("discriminator")
        if isinstance(discriminator, dict):
            adapted["discriminator"] = discriminator["propertyName"]
        return adapted
    if isinstance(schema, list):
        return [_asyncapi_schema(item) for item in schema]
    return schema


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
            add(def_name, _asyncapi_schema(definition))
        add(name, _asyncapi_schema(schema))
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
                    "description": "The run_id: JetStream drops a duplicate submission within the "
                    "stream's duplicate window.",
                }
            },
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
    schema = json_schema(contracts.RunEvent)
    return sorted(schema["discriminator"]["mapping"])


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
            "JSON message schemas. Generated from swarm.contracts by `python -m swarm.protogen`.",
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


def readme(channels: Iterable[Channel] = CHANNELS) -> str:
    """proto/README.md: how a client in any language submits a task and follows it."""
    channels = tuple(channels)
    rows = []
    for channel in channels:
        names = ", ".join(f"`{name}`" for name in _message_names(channel))
        schema = f"[{model_name(channel.message)}](schemas/{model_name(channel.message)}.json)"
        reply = f" → [{model_name(channel.reply)}](schemas/{model_name(channel.reply)}.json)" if channel.reply else ""
        rows.append(f"| `{channel.address}` | {channel.stream or 'core NATS'} | {schema}{reply} | {names} |")
    table = "\n".join(rows)
    task = contracts.Subjects.task("<tenant>")
    follow = contracts.Subjects.run_all("<tenant>", "<run_id>")
    cancel = contracts.Subjects.run_event("<tenant>", "<run_id>", "cancel")
    terminal = ", ".join(f"`{kind}`" for kind in TERMINAL_RUN_EVENTS)
    return f"""# Swarm wire contract

Generated from `libs/swarm/contracts.py` by `python -m swarm.protogen` (`make proto`); do not edit.
A unit test fails when these files drift from the code.

- `asyncapi.json` — AsyncAPI 3.0.0: every channel (subject pattern), its stream and its messages.
- `schemas/<Model>.json` — a JSON Schema (draft 2020-12) per message. Messages are JSON objects;
  unknown fields are rejected; every message carries `"v": {CONTRACT_VERSION}` (the contract version).

## Submit a task from any NATS client

1. Choose a `run_id` (1-64 of `A-Z a-z 0-9 _ -`) and a tenant (`{contracts.DEFAULT_TENANT}` if you have none).
2. Publish to JetStream on `{task}` (stream `{contracts.TASKS.name}`) with the header
   `Nats-Msg-Id: <run_id>` and a JSON body valid against
   [schemas/TaskSubmission.json](schemas/TaskSubmission.json): `run_id`, `tenant`, and a `goal`
   or an explicit `plan`. Wait for the PubAck; publishing the same run_id again is a no-op
   within the stream's duplicate window, so retrying a publish is safe.

```json
{{"v": {CONTRACT_VERSION}, "run_id": "r-0001", "tenant": "{contracts.DEFAULT_TENANT}", "goal": "Compare solar, wind and hydro power"}}
```

## Follow it

Subscribe (an ordered or ephemeral JetStream consumer on stream `{contracts.RUNS.name}`, deliver-all, so
events published before you subscribed are not missed) to `{follow}`. Every message is a
run event ([schemas/RunEvent.json](schemas/RunEvent.json)), told apart by its `kind` field, which is
also the last subject token. The run is over at the first terminal kind: {terminal}.
`completed` carries the `answer` and a `summary`.

To cancel, publish a `cancel` event (`RunCancelRequested`) to `{cancel}`.

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
    parser = argparse.ArgumentParser(prog="python -m swarm.protogen", description=__doc__.splitlines()[0])
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
