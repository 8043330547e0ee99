"""The gateway-sim load-test scenario runs end to end (figures are measured by the benchmark, not here)."""

from __future__ import annotations

import pytest

from loadtest.gateway_sim import run

pytestmark = pytest.mark.integration


async def test_gateway_sim_scenario_reports_its_figures() -> None:
    result = await run(callers=20, duration_s=1.0, gateway="inprocess", sim_latency_ms=20)
    assert result["scenario"] == "gateway-sim" and result["errors"] == {}
    assert result["requests"] > 0 and result["requests_per_s"] > 0
    added = result["added_latency_ms"]
    assert added["p50"] is not None and added["p99"] >= added["p50"]
    assert result["gateway"]["backend"] == "sim"
