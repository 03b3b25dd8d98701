"""Settings of one teacher: a LiteLLM model string plus options and limits."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class TeacherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str  # short alias used in the store and CLI output
    # LiteLLM model string ("openai/gpt-4o-mini", "anthropic/claude-...",
    # "hosted_vllm/Qwen...", "openai/<alias>" on llama.cpp), or "self" for the student.
    model: str
    api_base: str | None = None
    api_key_env: str | None = None  # NAME of the env var holding the key; keys never stored
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(512, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    samples: int = Field(1, ge=1, le=32)  # rationales per question
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0)  # retries after the first attempt, for transient errors only
    # Jittered exponential backoff between retries: initial, initial*2, ... capped at backoff_max_s,
    # each plus up to backoff_initial_s of jitter; a server's Retry-After wins when longer
    # (itself capped at retry_after_max_s so a hostile header cannot stall a run).
    backoff_initial_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    retry_after_max_s: float = Field(120.0, ge=0)
    rpm: float | None = Field(None, gt=0)  # requests per minute
    tpm: float | None = Field(None, gt=0)  # tokens per minute
    max_concurrency: int = Field(8, ge=1)
    input_cost_per_token: float | None = Field(None, ge=0)  # for local/unknown models
    output_cost_per_token: float | None = Field(None, ge=0)
    extra: dict[str, Any] = Field(default_factory=dict)  # passed through to litellm
    # false: the teacher writes no rationales (e.g. one used only as the [verify] judge)
    teach: bool = True

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "-_." for c in v):
            raise ValueError("use letters, digits, '-', '_' or '.'")
        return v

    @property
    def is_self(self) -> bool:
        return self.model == "self"
