"""Teachers reached through LiteLLM: client, cache, retries, rate limits, cost, agreement.

Never imports torch.  LiteLLM would fetch a price list from the network at import
unless told to use its bundled copy, so set that before anything imports it."""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from .budget import Budget  # noqa: E402
from .client import CallResult, TeacherClient  # noqa: E402
from .config import DeploymentConfig, TeacherConfig, redact  # noqa: E402
from .errors import (  # noqa: E402
    BudgetExceeded,
    TeacherAuthError,
    TeacherBadRequest,
    TeacherBadResponse,
    TeacherBatchIncomplete,
    TeacherCallsFailed,
    TeacherError,
    TeacherRateLimited,
    TeacherTimeout,
    TeacherUnavailable,
    TeacherUnexpectedError,
)
from .pool import TeacherPool, TeacherRequest  # noqa: E402

__all__ = [
    "Budget", "BudgetExceeded", "CallResult", "DeploymentConfig", "TeacherAuthError", "TeacherBadRequest",
    "TeacherBadResponse", "TeacherBatchIncomplete", "TeacherCallsFailed", "TeacherClient", "TeacherConfig",
    "TeacherError", "TeacherPool", "TeacherRateLimited", "TeacherRequest", "TeacherTimeout", "TeacherUnavailable",
    "TeacherUnexpectedError", "redact",
]
