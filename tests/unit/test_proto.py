"""proto/ is generated from the contracts: it must be up to date, and the AsyncAPI document well formed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from swarm import contracts
from swarm.contracts import CHANNELS, RunCompleted, RunSummary, TaskSubmission
from swarm.ops import protogen

REPO_PROTO = Path(__file__).resolve().parents[2] / "proto"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("proto")
    protogen.write(out)
    return out


@pytest.fixture(scope="module")
def doc(generated: Path) -> dict[str, Any]:
    return json.loads((generated / "asyncapi.json").read_text())


def _files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_repo_proto_is_up_to_date(generated: Path) -> None:
    fresh, committed = _files(generated), _files(REPO_PROTO)
    missing = sorted(set(fresh) - set(committed))
    extra = sorted(set(committed) - set(fresh))
    differ = sorted(path for path in set(fresh) & set(committed) if fresh[path] != committed[path])
    assert not (missing or extra or differ), (
        f"proto/ is out of date (run `make proto`): missing={missing} extra={extra} differ={differ}"
    )


def test_generation_is_deterministic(generated: Path) -> None:
    assert protogen.generate() == _files(generated)
    assert all(content.endswith("\n") for content in _files(generated).values())


def test_check_reports_drift(generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    protogen.write(tmp_path)
    assert protogen.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "schemas" / "TaskSubmission.json").write_text("{}\n")
    (tmp_path / "schemas" / "StepResultBatch.json").unlink()
    (tmp_path / "stale.json").write_text("{}\n")
    assert protogen.main(["--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "differs schemas/TaskSubmission.json" in err
    assert "missing schemas/StepResultBatch.json" in err
    assert "extra stale.json" in err
    protogen.write(tmp_path)
    assert protogen.drift(tmp_path) == []


def test_one_schema_file_per_channel_model(generated: Path) -> None:
    expected = set()
    for channel in CHANNELS:
        expected.add(protogen.model_name(channel.message))
        if channel.reply is not None:
            expected.add(protogen.model_name(channel.reply))
    assert {p.stem for p in (generated / "schemas").glob("*.json")} == expected
    assert "RunEvent" in expected


def test_asyncapi_header(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] == "Swarm"
    assert doc["info"]["version"] == str(contracts.CONTRACT_VERSION)


def test_every_channel_has_address_and_messages(doc: dict[str, Any]) -> None:
    addresses = set()
    for channel_id, channel in doc["channels"].items():
        assert "address" in channel, channel_id
        assert channel["messages"], channel_id
        address = channel["address"]
        if address is None:  # a reply inbox: dynamic by design
            continue
        addresses.add(address)
        placeholders = set(re.findall(r"\{([a-z_]+)\}", address))
        assert set(channel.get("parameters", {})) == placeholders, channel_id
        for parameter in channel.get("parameters", {}).values():
            assert parameter["description"]
    assert addresses == {channel.address for channel in CHANNELS}


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and token in node, f"unresolved $ref {ref}"
        node = node[token]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in _refs(item)]
    return []


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    refs = _refs(doc)
    assert refs
    for ref in refs:
        _resolve(doc, ref)


def test_operations_use_their_channels_messages(doc: dict[str, Any]) -> None:
    actions = {}
    for op_id, operation in doc["operations"].items():
        assert operation["action"] in ("send", "receive"), op_id
        channel_ref = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), op_id
        if "reply" in operation:
            reply_ref = operation["reply"]["channel"]["$ref"]
            for message in operation["reply"]["messages"]:
                assert message["$ref"].startswith(reply_ref + "/messages/"), op_id
        for message in operation["messages"]:
            actions[message["$ref"].rsplit("/", 1)[-1]] = operation["action"]
    assert actions["TaskSubmission"] == "send"
    assert actions["InferenceRequest"] == "send"
    assert actions["RunCancelRequested"] == "send"
    assert actions["RunCompleted"] == "receive"
    assert actions["StepResultBatch"] == "receive"


def test_messages_reference_component_schemas(doc: dict[str, Any]) -> None:
    for name, message in doc["components"]["messages"].items():
        assert message["payload"]["$ref"] == f"#/components/schemas/{name}"
        assert message["contentType"] == "application/json"


def _keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {key for value in node.values() for key in _keys(value)}
    if isinstance(node, list):
        return {key for item in node for key in _keys(item)}
    return set()


def test_run_events_are_told_apart_by_a_required_kind_const(generated: Path, doc: dict[str, Any]) -> None:
    # No `discriminator` in any of its three dialects: oneOf over members whose `kind` is a required const.
    assert "discriminator" not in _keys(doc)
    event_schema = json.loads((generated / "schemas" / "RunEvent.json").read_text())
    assert "discriminator" not in _keys(event_schema)
    members = [option["$ref"].rsplit("/", 1)[-1] for option in event_schema["oneOf"]]
    kinds = []
    for name in members:
        member = event_schema["$defs"][name]
        assert {"v", "kind"} <= set(member["required"]), name
        kinds.append(member["properties"]["kind"]["const"])
    assert len(set(kinds)) == len(members)


def test_every_message_requires_its_version(generated: Path) -> None:
    for path in (generated / "schemas").glob("*.json"):
        schema = json.loads(path.read_text())
        roots = [schema["$defs"][o["$ref"].rsplit("/", 1)[-1]] for o in schema["oneOf"]] if "oneOf" in schema else [schema]
        for root in roots:
            assert "v" in root["required"], (path.name, root["title"])


def test_readme_explains_submission_and_following(generated: Path) -> None:
    text = (generated / "README.md").read_text()
    assert "swarm.tasks.<tenant>" in text
    assert "Nats-Msg-Id" in text
    assert "schemas/TaskSubmission.json" in text
    assert "swarm.run.<tenant>.<run_id>.>" in text
    assert "`RUNS`" in text
    for kind in contracts.TERMINAL_RUN_EVENTS:
        assert f"`{kind}`" in text


def test_messages_validate_against_their_schema_files(generated: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    task_schema = json.loads((generated / "schemas" / "TaskSubmission.json").read_text())
    event_schema = json.loads((generated / "schemas" / "RunEvent.json").read_text())
    jsonschema.Draft202012Validator.check_schema(task_schema)
    jsonschema.Draft202012Validator.check_schema(event_schema)

    task = json.loads(TaskSubmission(run_id="r-1", goal="compare").model_dump_json())
    jsonschema.validate(task, task_schema, cls=jsonschema.Draft202012Validator)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**task, "surprise": 1}, task_schema, cls=jsonschema.Draft202012Validator)

    summary = RunSummary(
        agents_count=1, steps_total=1, steps_succeeded=1, steps_failed=0, retries_count=0,
        prompt_tokens=1, completion_tokens=1, wall_ms=1.0,
    )
    completed = RunCompleted(run_id="r-1", tenant="default", answer="42", summary=summary)
    event = json.loads(contracts.RUN_EVENT.dump_json(completed))
    jsonschema.validate(event, event_schema, cls=jsonschema.Draft202012Validator)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**event, "kind": "nonsense"}, event_schema, cls=jsonschema.Draft202012Validator)


def test_readme_states_every_rule_limit_and_rejection_code(generated: Path) -> None:
    text = (generated / "README.md").read_text()
    assert f"({contracts.TASKS.duplicate_window_s:g} s)" in text
    assert f"{contracts.RUNS.max_age_s / 86400:g} days" in text
    for limit in (contracts.PLAN_MAX_AGENTS, contracts.PLAN_MAX_STEPS, contracts.STEP_MAX_DEPENDS_ON):
        assert str(limit) in text
    for code in contracts.RejectionCode:
        assert f"`{code.value}`" in text, code
    for rule in ("Nats-Msg-Id", "tenant", "offset", "run_id` is used once"):
        assert rule in text, rule
