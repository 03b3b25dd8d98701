"""The workspace configuration (distillery.toml): one pydantic model composed
of the student's and teachers' settings plus the loop's own.

`load_config` turns every problem into a ConfigError naming the file, the key,
its line and the allowed values (see loop/errors.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from student.config import GenerationConfig, LoraConfig, LossConfig, ModelConfig, TrainConfig
from teachers.config import TeacherConfig
from teachers.verify import VerifyConfig

from loop.core.tracking import TrackConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskConfig(_Strict):
    # "arithmetic": the built-in generated multi-step word problems (exact answers);
    # "jsonl": whatever `distillery data add` imported.
    kind: Literal["arithmetic", "jsonl"] = "arithmetic"
    answer_format: Literal["number", "choice", "text"] = "number"
    pool_size: int = Field(64, ge=1)  # generated task only
    dev_size: int = Field(32, ge=1)  # generated task only
    difficulty: int = Field(2, ge=1, le=6)  # generated task: operations per problem
    max_number: int = Field(20, ge=2, le=1000)  # generated task: largest starting value / operand
    seed: int = 0


class LoopConfig(_Strict):
    max_iterations: int = Field(3, ge=0)
    patience: int = Field(2, ge=1)  # iterations without dev gain before stopping
    combine: Literal["replace", "accumulate"] = "replace"
    max_refinements_per_iteration: int | None = Field(None, ge=1)
    privileged_gold: bool = True  # show the gold answer to the refine template
    budget_usd: float | None = Field(None, ge=0)
    mine_limit: int | None = Field(None, ge=1)  # only mine this many pool questions per iteration
    eval_pool: bool = True  # also score the pool at `evaluate`
    # seed the dataset with an example's gold rationale (from the data) when no
    # teacher rationale for it was accepted yet
    gold_fallback: bool = False
    # when version k equals version k-1 (no demonstration changed): "skip" keeps
    # k-1's adapter (and its dev scores; the iteration counts towards patience),
    # "train" trains again on the same data (more epochs)
    on_unchanged: Literal["skip", "train"] = "skip"


class Config(_Strict):
    preset: Literal["demo", "tiny", "custom"] = "custom"
    run_name: str = "main"
    task: TaskConfig = Field(default_factory=TaskConfig)
    student: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    teachers: list[TeacherConfig] = Field(default_factory=lambda: [TeacherConfig(name="self", model="self")])
    loop: LoopConfig = Field(default_factory=LoopConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    track: TrackConfig = Field(default_factory=TrackConfig)


def load_config(path) -> Config:
    """Read and validate distillery.toml.  Every problem raises ConfigError
    naming the file, the line, the dotted key and the allowed values."""
    import tomllib
    from pathlib import Path

    from pydantic import ValidationError

    from loop.config.errors import toml_syntax_message, validation_message
    from loop.errors import ConfigError

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file; create it with `distillery init --preset demo`") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read the config ({e}); it must be a UTF-8 TOML file") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(toml_syntax_message(p, e)) from None
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(validation_message(p, text, Config, e)) from None
