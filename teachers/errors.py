"""Our error hierarchy for teacher calls, and the one place LiteLLM's exceptions
are translated into it (`translate`).

    TeacherError
    ├── TeacherAuthError      401/403, missing key: stops the run; message says which env var to set
    ├── TeacherBadRequest     400/404/422, unknown model, context too long, arguments that
    │                         cannot be passed (a TypeError from `extra`): stops the run
    ├── TeacherRateLimited    429 (retried; carries retry_after seconds when the server sent one)
    ├── TeacherUnavailable    5xx, connection refused/reset (retried)
    ├── TeacherTimeout        no answer within timeout_s (retried)
    ├── TeacherBadResponse    200 with an unusable body: not JSON, empty content (retried)
    ├── TeacherUnexpectedError an exception not known to be transient: the call fails, not retried
    ├── TeacherBatchIncomplete a batch job ended (expired, cancelled, failed) before a request in it
    │                         ran: that request is asked synchronously
    ├── TeacherCallsFailed    every call of a teacher in a batch failed: stops the step
    └── BudgetExceeded        the next call can never fit in budget_usd: stops the run

Only the kinds in `RETRYABLE` are retried: an error we cannot tell to be
transient is not (retrying a TypeError six times only hides it).  The kinds
in `FATAL` stop a batch, because every other call would fail the same way.
Every error names the teacher.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

from .config import MASK, redact


class TeacherError(Exception):
    """Base class.  `teacher` is the configured teacher name, `status_code` the
    HTTP status when there was one."""

    def __init__(self, message: str, *, teacher: str | None = None, status_code: int | None = None) -> None:
        self.teacher = teacher
        self.status_code = status_code
        prefix = f"teacher {teacher!r}: " if teacher else ""
        super().__init__(prefix + message)


class TeacherAuthError(TeacherError):
    pass


class TeacherBadRequest(TeacherError):
    pass


class TeacherRateLimited(TeacherError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class TeacherUnavailable(TeacherError):
    pass


class TeacherTimeout(TeacherError):
    pass


class TeacherBadResponse(TeacherError):
    pass


class TeacherUnexpectedError(TeacherError):
    pass


class TeacherBatchIncomplete(TeacherError):
    pass


class TeacherCallsFailed(TeacherError):
    """Raised by TeacherPool.run when not one call of a teacher succeeded:
    going on would be an iteration that silently learns nothing from it.
    `results` holds the batch's results (the failures are recorded, not
    cached: the next run asks again)."""

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.results: list | None = None


class BudgetExceeded(TeacherError):
    """Raised before a call that cannot fit in the budget: settled spend plus
    its estimate passes the cap (what is in flight only makes it worse).
    `results` is filled by TeacherPool.run with what completed before the stop."""

    def __init__(self, message: str, *, spent_usd: float = 0.0, reserved_usd: float = 0.0,
                 estimate_usd: float = 0.0, budget_usd: float = 0.0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.spent_usd = spent_usd
        self.reserved_usd = reserved_usd
        self.estimate_usd = estimate_usd
        self.budget_usd = budget_usd
        self.results: list | None = None

    @property
    def needed_usd(self) -> float:
        """The smallest cap under which the refused call would have gone ahead:
        a budget stop holds while budget_usd stays below it."""
        return self.spent_usd + self.estimate_usd


RETRYABLE = (TeacherRateLimited, TeacherUnavailable, TeacherTimeout, TeacherBadResponse)
FATAL = (TeacherAuthError, TeacherBadRequest, BudgetExceeded)


def key_env_hint(model: str, api_key_env: str | None) -> str:
    """The env var a user should set for this model ("set OPENAI_API_KEY")."""
    if api_key_env:
        return api_key_env
    provider = model.split("/", 1)[0] if "/" in model else "openai"
    return {
        "openai": "OPENAI_API_KEY",
        "anthropic": "ANTHROPIC_API_KEY",
        "gemini": "GEMINI_API_KEY",
        "mistral": "MISTRAL_API_KEY",
        "groq": "GROQ_API_KEY",
        "together_ai": "TOGETHERAI_API_KEY",
        "deepseek": "DEEPSEEK_API_KEY",
        "openrouter": "OPENROUTER_API_KEY",
        "cohere": "COHERE_API_KEY",
    }.get(provider, f"{provider.upper()}_API_KEY")


def retry_after_seconds(exc: BaseException) -> float | None:
    """Retry-After from a LiteLLM/OpenAI exception: `retry-after-ms` (OpenAI)
    first, then `Retry-After` in seconds, then a Router cooldown's length.
    HTTP-date forms are ignored."""
    headers: dict[str, str] = {}
    raw = getattr(exc, "litellm_response_headers", None)
    if raw:
        headers.update({str(k).lower(): str(v) for k, v in dict(raw).items()})
    resp = getattr(exc, "response", None)
    if resp is not None and getattr(resp, "headers", None) is not None:
        try:
            headers.update({str(k).lower(): str(v) for k, v in resp.headers.items()})
        except Exception:  # pragma: no cover - exotic response objects
            pass
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        v = headers.get(name)
        if v is None:
            continue
        try:
            secs = float(v) * scale
        except ValueError:
            continue
        if math.isfinite(secs) and secs >= 0:
            return secs
    # litellm.Router's "all deployments are cooling down" (a 429 without headers) says how long
    cooldown = getattr(exc, "cooldown_time", None)
    return float(cooldown) if isinstance(cooldown, (int, float)) and cooldown >= 0 else None


def line_error(status_code: int | None, message: str, *, teacher: str) -> TeacherError:
    """The error of one failed line of a batch job (its HTTP status, or None for
    an error object without one), classified as translate classifies a response."""
    msg = _short(redact_message(message))
    if status_code in (401, 403):
        return TeacherAuthError(f"batch line refused ({msg})", teacher=teacher, status_code=status_code)
    if status_code == 429:
        return TeacherRateLimited(f"batch line rate limited ({msg})", teacher=teacher, status_code=429)
    if status_code is not None and 400 <= status_code < 500:
        return TeacherBadRequest(f"batch line rejected ({msg})", teacher=teacher, status_code=status_code)
    return TeacherUnavailable(f"batch line failed ({msg})", teacher=teacher, status_code=status_code)


def translate(exc: BaseException, *, teacher: str, model: str, api_base: str | None = None,
              api_key_env: str | None = None, timeout_s: float | None = None) -> TeacherError:
    """Map a LiteLLM (or httpx/OpenAI) exception onto our hierarchy, with a
    message that says what to fix.  Never includes an API key: LiteLLM
    messages carry the provider's text, not the request headers."""
    import litellm  # imported lazily: teachers/__init__ sets the offline cost map first

    if isinstance(exc, TeacherError):
        return exc
    secret = os.environ.get(api_key_env, "") if api_key_env else ""
    msg = _short(redact_message(str(exc), (secret,)))
    bad_args = _argument_error(exc, litellm)
    if bad_args is not None:
        return TeacherBadRequest(
            f"the call to {model} could not be made ({type(bad_args).__name__}: "
            f"{_short(redact_message(str(bad_args), (secret,)))}); check the teacher's `extra` options in "
            "distillery.toml (an option LiteLLM does not accept, or a value of the wrong type)", teacher=teacher)
    code = getattr(exc, "status_code", None)
    where = f" at {api_base}" if api_base else ""
    if isinstance(exc, litellm.AuthenticationError) or code in (401, 403) or isinstance(exc, litellm.PermissionDeniedError):
        return TeacherAuthError(
            f"authentication failed for {model}{where} ({msg}); set {key_env_hint(model, api_key_env)} "
            f"to a valid key (or set api_key_env in distillery.toml)", teacher=teacher, status_code=code)
    if isinstance(exc, litellm.RateLimitError) or code == 429:
        return TeacherRateLimited(f"rate limited ({msg})", teacher=teacher, status_code=429,
                                  retry_after=retry_after_seconds(exc))
    if isinstance(exc, litellm.Timeout) or code == 408:
        return TeacherTimeout(f"no answer within {timeout_s}s from {model}{where}; raise timeout_s or check the server",
                              teacher=teacher, status_code=code)
    if isinstance(exc, litellm.ContextWindowExceededError):
        return TeacherBadRequest(f"prompt too long for {model} ({msg}); lower max_tokens or shorten the template",
                                 teacher=teacher, status_code=code)
    if isinstance(exc, litellm.NotFoundError) or code == 404:
        return TeacherBadRequest(f"model or endpoint not found ({msg}); check the model name {model!r} and api_base{where}",
                                 teacher=teacher, status_code=code)
    if isinstance(exc, (litellm.BadRequestError, litellm.UnprocessableEntityError)) or code in (400, 422):
        if "LLM Provider NOT provided" in str(exc) or "provider" in msg.lower() and "not" in msg.lower():
            return TeacherBadRequest(f"unknown model {model!r} ({msg}); use a LiteLLM model string such as "
                                     f"'openai/gpt-4o-mini' or 'openai/<alias>' with api_base", teacher=teacher, status_code=code)
        return TeacherBadRequest(f"request rejected ({msg}); check the model name {model!r} and the generation options",
                                 teacher=teacher, status_code=code)
    if _in_chain(exc, json.JSONDecodeError) or "expecting value" in msg.lower() or (
            "json" in msg.lower() and "decode" in msg.lower()):
        return TeacherBadResponse(f"response body is not valid JSON ({msg})", teacher=teacher, status_code=code)
    if isinstance(exc, litellm.APIConnectionError) or "connection" in msg.lower():
        return TeacherUnavailable(f"cannot connect to {model}{where} ({msg}); is the server running?",
                                  teacher=teacher, status_code=code)
    if isinstance(exc, (litellm.InternalServerError, litellm.ServiceUnavailableError, litellm.BadGatewayError)) or (
        code is not None and code >= 500
    ):
        return TeacherUnavailable(f"server error {code} ({msg})", teacher=teacher, status_code=code)
    if isinstance(exc, (TimeoutError,)):
        return TeacherTimeout(f"no answer within {timeout_s}s", teacher=teacher)
    if isinstance(exc, (ConnectionError, OSError)):
        return TeacherUnavailable(f"connection failed ({msg})", teacher=teacher)
    if isinstance(exc, litellm.APIError):
        return TeacherUnavailable(f"API error ({msg})", teacher=teacher, status_code=code)
    return TeacherUnexpectedError(f"unexpected {type(exc).__name__} ({msg}); not retried, as it is not a known "
                                  "transient failure; the next `distillery run` asks again",
                                  teacher=teacher, status_code=code)


def _chain(exc: BaseException) -> list[BaseException]:
    """exc and what caused it (__cause__, else __context__), outermost first."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out and len(out) < 16:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _in_chain(exc: BaseException, kind: type | tuple[type, ...]) -> bool:
    return any(isinstance(e, kind) for e in _chain(exc))


# Errors of the arguments of a call: Python raises them at the call itself
# (`api_key` given twice), LiteLLM while building the request (and then wraps
# them in an APIConnectionError).  No retry can fix them.
_ARGUMENT_ERRORS = (TypeError, AttributeError, KeyError, ValueError)


def _argument_error(exc: BaseException, litellm: Any) -> BaseException | None:
    """The argument error behind `exc`, or None.  Never when a network error
    is in the chain (a real connection failure) or a body that is not JSON
    (JSONDecodeError is a ValueError, but a bad response)."""
    chain = _chain(exc)
    if any(isinstance(e, (OSError, TimeoutError, json.JSONDecodeError))
           or type(e).__module__.startswith(("httpx", "aiohttp")) for e in chain):
        return None
    if isinstance(exc, litellm.APIConnectionError):
        inner = chain[1:]  # what LiteLLM met before sending anything
    elif type(exc).__module__.startswith(("litellm", "openai")):
        return None  # a provider or HTTP error, classified by translate
    else:
        inner = chain[:1]  # raised at the call itself
    return next((e for e in inner if isinstance(e, _ARGUMENT_ERRORS)), None)


# Providers echo (masked) keys in auth errors ("Incorrect API key provided:
# sk-proj-****abcd"); our messages end up in the database and the logs, so any
# key-looking token is removed before a message is built.
_KEYLIKE = re.compile(r"(?i)\b(?:sk|pk|rk|ak|key|api[-_]?key|bearer)[-_ :=]+(?=[\w\-*.]*[\d*])[\w\-*.]{4,}|\*{3,}[\w\-]*")


def redact_message(text: str, secrets: tuple[str, ...] = ()) -> str:
    """An error message with the given secrets, credentials in URLs and
    key-looking tokens masked."""
    return _KEYLIKE.sub(MASK, redact(text, secrets))


def _short(text: str, limit: int = 300) -> str:
    text = redact_message(" ".join(text.split()))
    for prefix in ("litellm.", ):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text if len(text) <= limit else text[: limit - 3] + "..."
