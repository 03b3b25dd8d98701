"""The student as the loop uses it: the model in this process (loaded on first
use), which adapter its weights hold, and the vLLM server of
generation.backend = "vllm" (loop/core/vllm_server.py).

The orchestrator owns one and hands it to the steps in their context
(loop/core/steps/context.py).  A step asks for weights with `use(adapter)`;
what the weights are after training is the step's result (TrainResult.holds),
which the orchestrator records with `holds(...)`: nothing else changes which
adapter is loaded.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from loop.errors import UserError

UNLOADED = "unloaded"  # no model in memory yet


class StudentHandle:
    def __init__(self, cfg, ws: Path, *, console=None, quiet: bool = False, timings: dict | None = None) -> None:
        self.cfg = cfg
        self.ws = Path(ws)
        self.console = console
        self.quiet = quiet
        self.timings = timings if timings is not None else {}
        self._student = None
        self._init_state = None
        self._vllm = None
        # the adapter the in-memory weights hold: a workspace-relative directory, None for the
        # freshly initialised adapter, ("partial", k) for mid-training weights, UNLOADED before loading
        self.loaded: Any = UNLOADED

    def configure(self, cfg) -> None:
        """Use `cfg` (a replayed run's own settings); the server is asked again."""
        self.cfg = cfg
        self._vllm = None

    @property
    def in_memory(self) -> bool:
        return self._student is not None

    @property
    def student(self):
        if self._student is None:
            from student.errors import StudentError
            from student.model import load_student

            t0 = time.perf_counter()
            if not self.quiet and self.console is not None:
                self.console.print(f"loading student [bold]{self.cfg.student.name}[/] ...")
            try:
                self._student = load_student(self.cfg.student, self.cfg.lora)
            except StudentError as e:
                raise UserError(f"student.name = {self.cfg.student.name!r}: {e}") from None
            except OSError as e:  # transformers: not a local path and not in the offline hub cache
                raise UserError(
                    f"student.name = {self.cfg.student.name!r}: cannot load it ({str(e).splitlines()[0][:200]}); "
                    "use \"tiny\", \"smollm2\", a local model directory or a .gguf file"
                ) from None
            self._init_state = {k: p.detach().clone() for k, p in self._student.adapter_params("student").items()}
            self.loaded = None
            self.timings["load"] = self.timings.get("load", 0.0) + time.perf_counter() - t0
        return self._student

    def use(self, adapter: str | None) -> None:
        """Make the student's weights those of `adapter` (a workspace-relative
        directory), or the freshly initialised adapter for None."""
        st = self.student
        if self.loaded == adapter:
            return
        import torch

        if adapter is None:
            with torch.no_grad():
                for k, p in st.adapter_params("student").items():
                    p.copy_(self._init_state[k])
        else:
            st.load_adapter(self.ws / adapter, "student")
        self.loaded = adapter

    def holds(self, adapter: Any) -> None:
        """Record what the in-memory weights are after a step changed them
        (the orchestrator, from the step's result)."""
        self.loaded = adapter

    def adapter_sha(self, adapter: str | Path | None) -> str:
        if adapter is None:
            doc = {"init": self.cfg.student.model_dump(), "lora": self.cfg.lora.model_dump()}
            return "init-" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]
        p = self.ws / adapter / "adapter_model.safetensors"
        return hashlib.sha256(p.read_bytes()).hexdigest()

    @property
    def vllm(self):
        """The vLLM server of generation.backend = "vllm", and the adapter this
        process made it hold."""
        if self._vllm is None:
            from loop.core.vllm_server import VLLMServer

            self._vllm = VLLMServer(self.cfg, self.ws)
        return self._vllm
