"""Reference markers of large payloads (pure functions; the round trips are in tests/integration)."""

from __future__ import annotations

import pytest

from swarm.payloads import is_ref, make_ref, parse_ref


def test_a_marker_names_its_store_and_object() -> None:
    marker = make_ref("swarm_payloads", "run-1.step-1", 3_000_000)
    assert is_ref(marker) and len(marker) < 100
    assert parse_ref(marker) == ("swarm_payloads", "run-1.step-1")


@pytest.mark.parametrize("value", [b"", b"plain text", b'{"answer": 1}', b'{"$ref": "obj://x/y"}'])
def test_ordinary_values_are_not_markers(value: bytes) -> None:
    assert not is_ref(value)


def test_a_malformed_marker_is_refused() -> None:
    with pytest.raises(ValueError, match="malformed"):
        parse_ref(b'{"$ref":"obj://only-a-store"}')
