"""FAKE tensorrt_llm.llmapi: records calls; the real package needs CUDA."""

from __future__ import annotations

from pydantic import BaseModel


class GuidedDecodingParams:
    """FAKE GuidedDecodingParams: keyword-only, at most one constraint, like the real one."""

    def __init__(
        self,
        *,
        json: str | BaseModel | dict | None = None,
        regex: str | None = None,
        grammar: str | None = None,
        json_object: bool = False,
        structural_tag: str | None = None,
    ) -> None:
        given = [v for v in (json, regex, grammar, structural_tag) if v is not None] + (
            [True] if json_object else []
        )
        if len(given) > 1:
            raise ValueError("only one guided decoding constraint may be set")
        self.json = json
        self.regex = regex
        self.grammar = grammar
        self.json_object = json_object
        self.structural_tag = structural_tag
