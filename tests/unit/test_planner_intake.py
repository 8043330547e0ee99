"""The planner's intake without a server: which tasks are rejected, under which run, with which reasons."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.planner.intake import TaskRejected, parse_task, plan_reason, schema_reasons
from swarm.contracts import (
    DEFAULT_TENANT,
    AgentSpec,
    Plan,
    RejectionCode,
    RunRejected,
    StepSpec,
    TaskSubmission,
    is_valid_id,
)
from swarm.dag import PlanError, validate_plan

SUBJECT = "swarm.tasks.acme"


def body(**fields: Any) -> bytes:
    return json.dumps({"v": 1, "run_id": "r1", "goal": "compare", **fields}).encode()


def rejected(data: bytes, subject: str = SUBJECT, msg_id: str | None = "r1") -> TaskRejected:
    with pytest.raises(TaskRejected) as caught:
        parse_task(data, subject, {"Nats-Msg-Id": msg_id} if msg_id is not None else None)
    return caught.value


def codes(exc: TaskRejected) -> set[tuple[str, str]]:
    return {(r.path, r.code.value) for r in exc.reasons}


def test_a_valid_task_takes_the_subjects_tenant_when_it_names_none() -> None:
    task = parse_task(body(), SUBJECT, {"Nats-Msg-Id": "r1"})
    assert (task.run_id, task.tenant, task.goal) == ("r1", "acme", "compare")


def test_a_naive_timestamp_is_rejected_with_the_format_reason() -> None:
    exc = rejected(body(submitted_at="2025-01-01T00:00:00"))
    assert codes(exc) == {("/submitted_at", "format")}
    assert "offset" in exc.reasons[0].message
    task = parse_task(body(submitted_at="2025-01-01T01:00:00+01:00"), SUBJECT, {"Nats-Msg-Id": "r1"})
    assert task.submitted_at.utcoffset() is not None and task.submitted_at.hour == 1


def test_every_broken_rule_is_a_reason_with_a_json_pointer() -> None:
    exc = rejected(body(bogus=1, priority="high", goal="  ", labels={"k": 5}))
    assert codes(exc) == {
        ("/bogus", "additionalProperties"),
        ("/priority", "type"),
        ("/goal", "pattern"),
        ("/labels/k", "type"),
    }
    assert "must not be blank" in exc.error and "/priority: must be integer" in exc.error
    # No Python in the words: no reprs of None, no 'Input should be'.
    assert "None" not in exc.error and "Input should" not in exc.error


def test_goal_or_plan_and_the_version_are_required() -> None:
    exc = rejected(json.dumps({"run_id": "r1"}).encode())
    assert codes(exc) == {("", "anyOf"), ("/v", "required")}


def test_a_wrong_type_in_a_plan_gives_one_reason_at_its_path() -> None:
    plan = {"agents": [{"id": "a", "role": "r"}], "steps": 5}
    exc = rejected(body(goal=None, plan=plan))
    assert codes(exc) == {("/plan/steps", "type")}, exc.reasons


def test_run_id_header_must_be_present_and_equal() -> None:
    missing = rejected(body(), msg_id=None)
    assert codes(missing) == {("", "msg_id_missing")}
    assert missing.run_id == "r1"  # reported under the body's run id, the one a client follows
    mismatch = rejected(body(), msg_id="r2")
    assert codes(mismatch) == {("/run_id", "msg_id_mismatch")}
    assert mismatch.run_id == "r1"


def test_a_tenant_other_than_the_subjects_is_rejected_under_the_subjects_tenant() -> None:
    exc = rejected(body(tenant="globex"))
    assert codes(exc) == {("/tenant", "tenant_mismatch")}
    assert exc.tenant == "acme"
    no_tenant = rejected(body(), subject="swarm.tasks.a.b")
    assert codes(no_tenant) == {("", "tenant_mismatch")} and no_tenant.tenant == DEFAULT_TENANT


def test_an_unparseable_body_is_reported_under_the_header_run_id() -> None:
    exc = rejected(b"\x00 not json", msg_id="r8")
    assert (exc.run_id, exc.tenant, codes(exc)) == ("r8", "acme", {("", "json")})
    nobody = rejected(b"[1]", msg_id="not an id")
    assert is_valid_id(nobody.run_id) and nobody.run_id.startswith("rejected-")
    assert ("", "type") in codes(nobody)


def test_schema_stage_and_model_agree_on_what_a_python_client_sends() -> None:
    task = TaskSubmission(run_id="r1", tenant="acme", plan=Plan(
        agents=(AgentSpec(id="a", role="r"),), steps=(StepSpec(id="s", agent_id="a", instruction="do"),)
    ))  # fmt: skip
    assert schema_reasons(json.loads(task.model_dump_json())) == []
    assert parse_task(task.model_dump_json().encode(), SUBJECT, {"Nats-Msg-Id": "r1"}) == task


def test_counts_are_limited_in_the_schema() -> None:
    steps = [{"id": "s", "agent_id": "a", "instruction": "x", "depends_on": [f"d{i}" for i in range(501)]}]
    plan = {"agents": [{"id": "a", "role": "r"}], "steps": steps}
    assert codes(rejected(body(goal=None, plan=plan))) == {("/plan/steps/0/depends_on", "maxItems")}
    assert codes(rejected(body(labels={f"k{i}": "v" for i in range(65)}))) == {("/labels", "maxProperties")}


@pytest.mark.parametrize(
    ("steps", "code", "path"),
    [
        ([("s", "a", ()), ("s", "a", ())], RejectionCode.DUPLICATE_ID, "/plan/steps/1/id"),
        ([("s", "nobody", ())], RejectionCode.UNKNOWN_AGENT, "/plan/steps/0/agent_id"),
        ([("s", "a", ("t", "ghost"))], RejectionCode.UNKNOWN_STEP, "/plan/steps/0/depends_on/0"),
        ([("s", "a", ("t",)), ("t", "a", ("s",))], RejectionCode.CYCLE, "/plan/steps"),
        ([("s", "a", ("s",))], RejectionCode.CYCLE, "/plan/steps/0/depends_on/0"),
    ],
)
def test_plan_rules_beyond_the_schema_have_codes_and_paths(
    steps: list[tuple[str, str, tuple[str, ...]]], code: RejectionCode, path: str
) -> None:
    plan = Plan(
        agents=(AgentSpec(id="a", role="r"),),
        steps=tuple(StepSpec(id=i, agent_id=a, instruction="x", depends_on=d) for i, a, d in steps),
    )
    with pytest.raises(PlanError) as caught:
        validate_plan(plan)
    found = plan_reason(caught.value, explicit=True)
    assert (found.code, found.path) == (code, path), found
    generated = plan_reason(caught.value, explicit=False)
    assert (generated.code, generated.path) == (RejectionCode.PLAN_FAILED, "")


def test_reasons_travel_in_the_rejected_event() -> None:
    exc = rejected(body(bogus=1))
    event = RunRejected(run_id=exc.run_id, tenant=exc.tenant, error=exc.error, reasons=exc.reasons)
    wire = json.loads(event.model_dump_json())
    assert wire["reasons"] == [{"path": "/bogus", "code": "additionalProperties", "message": "is not a known property"}]
