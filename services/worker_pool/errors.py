"""How a step attempt fails: the one exception the executor turns into a failed StepResult."""

from __future__ import annotations


class StepFailed(Exception):
    """An attempt failed for a reason the dispatcher should know about."""

    def __init__(self, reason: str, retryable: bool) -> None:
        super().__init__(reason)
        self.retryable = retryable
