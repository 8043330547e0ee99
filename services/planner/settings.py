"""Planner settings (env prefix SWARM_PLANNER_); NATS settings are the shared SWARM_NATS_ ones."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from swarm.contracts import PlanPattern
from swarm.dag import PlanLimits
from swarm.settings import NatsSettings


class PlannerSettings(BaseSettings):
    """Everything the planner service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="SWARM_PLANNER_", extra="ignore")

    nats: NatsSettings = Field(default_factory=NatsSettings, description="How to reach NATS (SWARM_NATS_*).")
    log_level: str = Field("INFO", description="Log level of the service.")

    max_agents: int = Field(300, ge=2, description="Largest plan accepted: agents.")
    max_steps: int = Field(4000, ge=2, description="Largest plan accepted: steps.")
    max_depends_on: int = Field(500, ge=2, description="Most dependencies one step may have.")

    default_n_agents: int = Field(4, ge=1, le=300, description="Sub-agents of a template when the task names none.")
    fallback_pattern: PlanPattern = Field(
        PlanPattern.MAP_REDUCE, description="Template used when the LLM cannot produce a valid plan."
    )
    reduce_fan_in: int = Field(
        16, ge=2, description="Most outputs one synthesis step of a template reads; more are reduced in a tree."
    )

    llm_enabled: bool = Field(True, description="Ask the gateway to decompose goals (else: templates only).")
    model_capability: Literal["auto", "small", "capable"] = Field(
        "auto",
        description="What the planning model is asked for: 'small' (a few sub-questions; code builds the DAG), "
        "'capable' (the whole plan: agents and steps), 'auto' (by the gateway's backend: llamacpp and sim "
        "small, openai and trtllm capable).",
    )
    llm_model: str = Field("default", description="Model name sent to the gateway.")
    llm_samples: int = Field(
        2, ge=1, le=10,
        description="Planning calls a small model gets per goal (new seed, hotter) before the template is used.",
    )  # fmt: skip
    llm_timeout_s: float = Field(60.0, gt=0, description="How long to wait for the gateway before the template.")
    llm_max_tokens: int = Field(1024, ge=64, le=32768, description="Completion budget of one planning call.")
    llm_temperature: float = Field(0.2, ge=0, le=2, description="Sampling temperature of planning calls.")
    llm_max_agents: int = Field(8, ge=1, le=300, description="Most agents the LLM may propose (schema maxItems).")
    llm_max_steps: int = Field(16, ge=1, le=4000, description="Most steps the LLM may propose (schema maxItems).")

    concurrency: int = Field(4, ge=1, le=256, description="Tasks fetched and planned at once.")
    fetch_timeout_s: float = Field(1.0, gt=0, description="Longest wait of one pull request for tasks.")
    ack_wait_s: float = Field(30.0, gt=0, description="Consumer ack wait; in-flight tasks are kept alive by heartbeats.")
    max_deliver: int = Field(20, ge=-1, description="Deliveries of a task before JetStream gives up (-1: forever).")
    retry_delay_s: float = Field(2.0, ge=0, description="Delay before a task whose handling failed is redelivered.")
    graceful_timeout_s: float = Field(
        90.0, gt=0, description="On SIGTERM, how long in-flight tasks may take to finish."
    )

    @model_validator(mode="after")
    def _fits(self) -> PlannerSettings:
        if self.graceful_timeout_s < self.llm_timeout_s:
            raise ValueError("graceful_timeout_s must cover llm_timeout_s, or shutdown cuts planning calls short")
        return self

    @property
    def limits(self) -> PlanLimits:
        """The plan limits validate_plan applies."""
        return PlanLimits(max_agents=self.max_agents, max_steps=self.max_steps, max_depends_on=self.max_depends_on)
