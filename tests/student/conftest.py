"""Shared fixtures of the student tests: the tiny in-code model (fast, no files)."""

from __future__ import annotations

import os

import pytest

# Two CPU cores are shared by the whole suite: small thread pools keep tests predictable.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def make_tiny_student():
    """Factory: make_tiny_student(seed=0, r=8, full_finetune=False, **cfg) -> a fresh
    tiny Student (2-layer, 64-dim Llama with a character tokenizer; ~0.1 s)."""
    import torch

    from student.config import LoraConfig, ModelConfig
    from student.model import load_student

    torch.set_num_threads(1)

    def make(*, seed: int = 0, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
             target_modules="all-linear", **model_kw):
        model_cfg = ModelConfig(name="tiny", seed=seed, device="cpu", **model_kw)
        lora_cfg = LoraConfig(r=r, alpha=alpha, dropout=dropout, target_modules=target_modules)
        return load_student(model_cfg, lora_cfg)

    return make


@pytest.fixture
def tiny_student(make_tiny_student):
    """A fresh tiny Student (LoRA adapters "student" and "teacher", seed 0)."""
    return make_tiny_student()
