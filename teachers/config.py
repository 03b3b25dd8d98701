"""Settings of one teacher: a LiteLLM model string plus options and limits.

Credentials come only from the environment (`api_key_env` names the
variable).  Anything in the settings that looks like a credential is refused
here, because the settings are stored (runs.config_json, teacher_calls.request)
and printed: a user name or password in a URL, a key-like entry in `extra`
(api_key, token, secret, password, authorization, ...), a header carrying one
(by its name, or a "Bearer ..." value under any name).
`redact` masks the same things in any JSON-able structure, for whatever is
stored or shown anyway (defence in depth: a value that got past validation,
a setting of another component, an error message).  The same rules hold in
each `[[teachers.deployments]]` (its api_base, its api_key_env).
"""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

MASK = "[redacted]"

# Words that make a setting's name a credential.  Matched as whole words of the
# name (split at '-', '_', '.' and camelCase), so max_tokens or top_k are not.
_CREDENTIAL_WORDS = frozenset({
    "key", "apikey", "token", "secret", "password", "passwd", "pwd", "authorization", "auth",
    "credential", "credentials", "bearer", "cookie", "signature",
})
# Keys of `extra` that the client sets itself: passing them again is a
# TypeError at the call (two values for one argument) or silently changes what
# the client relies on (stream: the response is no longer one message; n: the
# client reads one choice but pays for n).
_CLIENT_OWNED = {
    "model": "set the teacher's model", "messages": "the prompt comes from the templates (prompts/)",
    "api_base": "set the teacher's api_base", "base_url": "set the teacher's api_base",
    "timeout": "set timeout_s", "max_retries": "set max_retries", "num_retries": "set max_retries",
    "stream": "remove it: the client needs whole responses", "n": "set samples (one cached request per sample)",
}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@?#]*@")
_QUERY_PARAM = re.compile(r"([?&])([^=&#\s]+)=([^&#\s]*)")
# An Authorization-style value under whatever name: "Bearer sk-...", "Basic dXNlcjpwdw==".  The
# credential must hold a digit or '=' so that prose ("basic arithmetic") is left alone.
_AUTH_VALUE = re.compile(r"(?i)\b(bearer|basic)\s+(?=[A-Za-z._~+/\-]*[0-9=])[A-Za-z0-9._~+/=\-]{8,}")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")

FIX = 'use api_key_env: export the key in an environment variable and name it there (api_key_env = "OPENAI_API_KEY")'


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", _CAMEL.sub("_", name).lower()) if w]


def is_credential_key(name: str) -> bool:
    """Whether a setting or header named `name` holds a credential.  A name
    ending in "env" (api_key_env, vllm_api_key_env) names an environment
    variable, which is what we want users to write."""
    words = _words(str(name))
    if not words or words[-1] == "env":
        return False
    if "cost" in words or "per" in words:  # input_cost_per_token: a price, not a token
        return False
    return any(w in _CREDENTIAL_WORDS for w in words)


def _credential_in_url(url: str) -> str | None:
    """What in `url` is a credential ("user:password@", "query parameter 'key'"), or None."""
    if _USERINFO.search(url):
        return "a user name or password ('user:password@')"
    for _, name, _ in _QUERY_PARAM.findall(url):
        if is_credential_key(name):
            return f"the query parameter {name!r}"
    return None


def _redact_text(text: str, secrets: tuple[str, ...]) -> str:
    for s in secrets:
        text = text.replace(s, MASK)
    text = _USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
    text = _AUTH_VALUE.sub(lambda m: f"{m.group(1)} {MASK}", text)
    return _QUERY_PARAM.sub(
        lambda m: f"{m.group(1)}{m.group(2)}={MASK}" if is_credential_key(m.group(2)) else m.group(0), text)


# Shorter values are not real keys, and masking them would mangle ordinary text.
_MIN_SECRET = 8


def _named_env_values(obj: Any) -> list[str]:
    """The values of the environment variables that settings ending in "env"
    name (api_key_env = "OPENAI_API_KEY" -> the key itself)."""
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, str) and _words(str(k))[-1:] == ["env"] and os.environ.get(v):
                out.append(os.environ[v])
            else:
                out += _named_env_values(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out += _named_env_values(v)
    return out


def redact(obj: Any, secrets: tuple[str, ...] | list[str] = ()) -> Any:
    """A copy of a JSON-able structure with credentials masked: the value of
    every credential-named key (at any depth: headers included); inside any
    string, user names/passwords and credential query parameters of URLs and
    "Bearer/Basic <credential>"; and every occurrence of a known
    secret, wherever it hides (a header with a harmless name, a note): the
    given `secrets` and the values of the environment variables the structure
    names (api_key_env and the like).  Everything else is returned unchanged,
    so a config that passed validation and holds no key is its own redaction."""
    # longest first: a key that contains another is masked whole
    found = tuple(sorted({s for s in (*secrets, *_named_env_values(obj)) if s and len(s) >= _MIN_SECRET},
                         key=len, reverse=True))

    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            # a number is never a key (and masking one would break the stored config's validation)
            return {k: MASK if is_credential_key(k) and isinstance(v, str) and v else walk(v)
                    for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v) for v in x]
        if isinstance(x, str):
            return _redact_text(x, found)
        return x

    return walk(obj)


def _refuse(what: str, fix: str = FIX) -> PydanticCustomError:
    # A distinct error type, so the loop's config messages can leave the value
    # (a key) out of what they print.
    return PydanticCustomError("credential_in_config", "{what}, and distillery.toml is stored with each run; {fix}",
                               {"what": what, "fix": fix})


def _check_extra(value: Any, path: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            where = f"{path}.{k}"
            if is_credential_key(str(k)):
                raise _refuse(f"{where} looks like a credential")
            _check_extra(v, where)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_extra(v, f"{path}[{i}]")
    elif isinstance(value, str):
        what = _credential_in_url(value)
        if what:
            raise _refuse(f"{path} holds a URL with {what}")
        auth = _AUTH_VALUE.search(value)
        if auth:
            raise _refuse(f"{path} holds a credential ('{auth.group(1)} ...')")


def _check_api_base(v: str | None) -> str | None:
    what = _credential_in_url(v) if v else None
    if what:
        raise _refuse(f"api_base contains {what}", f"remove it from the URL and {FIX}")
    return v


def _check_key_env(v: str | None) -> str | None:
    # the usual slip is pasting the key itself here
    if v is not None and not _ENV_NAME.match(v):
        raise _refuse("api_key_env is not an environment variable name (letters, digits, '_')",
                      'write the name of the variable that holds the key (e.g. api_key_env = "OPENAI_API_KEY") '
                      "and export the key in it")
    return v


class _Endpoint(BaseModel):
    """The checks of every place requests can go (a teacher, a deployment):
    no credential in api_base, and api_key_env the name of a variable."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("api_base", check_fields=False)
    @classmethod
    def _api_base_has_no_credentials(cls, v: str | None) -> str | None:
        return _check_api_base(v)

    @field_validator("api_key_env", check_fields=False)
    @classmethod
    def _api_key_env_is_a_name(cls, v: str | None) -> str | None:
        return _check_key_env(v)


class DeploymentConfig(_Endpoint):
    """One endpoint of a routed teacher (`[[teachers.deployments]]`): the
    teacher's requests are spread over its deployments by litellm.Router."""

    # LiteLLM model string of this endpoint; default: the teacher's.  It must serve the
    # teacher's model: the cache key is the teacher's, whichever deployment answers.
    model: str | None = None
    api_base: str | None = None
    api_key_env: str | None = None  # NAME of the env var holding this deployment's key
    rpm: float | None = Field(None, gt=0)  # this deployment's limits (the Router routes around them)
    tpm: float | None = Field(None, gt=0)


def _conflict(what: str) -> PydanticCustomError:
    # its own type: printed as it is, without pydantic's "Value error, " in front
    return PydanticCustomError("conflicting_settings", "{what}", {"what": what})


def _apply(names: list[str]) -> str:
    return "applies" if len(names) == 1 else "apply"


# Providers whose batch API LiteLLM speaks in OpenAI's form (JSONL of /v1/chat/completions
# requests, /v1/files, /v1/batches): OpenAI itself and any compatible server via api_base.
BATCH_PROVIDERS = ("openai",)


def provider_of(model: str) -> str:
    """The LiteLLM provider prefix of a model string ("openai/gpt-4o-mini" -> "openai");
    a bare name is OpenAI's, as LiteLLM reads it."""
    return model.split("/", 1)[0] if "/" in model else "openai"


class TeacherConfig(_Endpoint):
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
    # Batch API (teachers/batch.py): a step's requests go as one batch job at the batch price;
    # its status is polled every batch_poll_s, and after batch_timeout_s it is cancelled
    # (what it finished is kept; the rest is asked synchronously).
    batch: bool = False
    batch_poll_s: float = Field(30.0, gt=0)
    batch_timeout_s: float = Field(24 * 3600.0, gt=0)
    # Several endpoints of this teacher behind litellm.Router (teachers/router.py): a failing
    # deployment is left out for cooldown_s after more than allowed_fails failures in a minute.
    deployments: list[DeploymentConfig] = Field(default_factory=list)
    cooldown_s: float = Field(60.0, gt=0)
    allowed_fails: int = Field(1, ge=0)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "-_." for c in v):
            raise ValueError("use letters, digits, '-', '_' or '.'")
        return v

    @field_validator("extra")
    @classmethod
    def _extra_is_passable(cls, v: dict[str, Any]) -> dict[str, Any]:
        for k in v:
            if k in _CLIENT_OWNED:
                raise ValueError(f"extra.{k} is set by the client itself; {_CLIENT_OWNED[k]}")
        _check_extra(v, "extra")
        return v

    @model_validator(mode="after")
    def _modes_fit(self) -> "TeacherConfig":
        """batch and deployments: what they need and what they exclude, with the fix."""
        if self.batch:
            if self.is_self:
                raise _conflict("batch = true applies to API teachers; the 'self' teacher is the student "
                                "sampling itself: remove batch")
            if self.deployments:
                raise _conflict("batch = true sends one batch job to one endpoint, and deployments spread "
                                "requests over several; keep one of them (api_base on the teacher for batch)")
            if provider_of(self.model) not in BATCH_PROVIDERS:
                raise _conflict(f"batch = true needs an OpenAI-compatible batch API, and {self.model!r} is a "
                                f"{provider_of(self.model)!r} model; use an \"openai/<model>\" model string "
                                "(with api_base for another OpenAI-compatible server) or remove batch")
        else:
            unused = self._changed("batch_poll_s", "batch_timeout_s")
            if unused:
                raise _conflict(f"{' and '.join(unused)} {_apply(unused)} only with batch = true; set batch = true or "
                                "remove them")
        if self.deployments:
            if self.is_self:
                raise _conflict("deployments apply to API teachers; the 'self' teacher has none: remove them")
            if self.api_base is not None or self.api_key_env is not None:
                raise _conflict("with deployments, set api_base and api_key_env in each [[teachers.deployments]] "
                                "(the Router picks the endpoint), not on the teacher")
            seen: dict[tuple, int] = {}
            for i, d in enumerate(self.deployments):
                ident = (d.model or self.model, d.api_base, d.api_key_env)
                if ident in seen:
                    raise _conflict(f"deployments[{i}] is the same endpoint as deployments[{seen[ident]}] (model "
                                    f"{ident[0]!r}, api_base {d.api_base!r}, api_key_env {d.api_key_env!r}); "
                                    "remove it, or point it at another api_base or key")
                seen[ident] = i
                if d.model == "self":
                    raise _conflict(f"deployments[{i}].model: 'self' is not an endpoint; use a LiteLLM model string")
        else:
            unused = self._changed("cooldown_s", "allowed_fails")
            if unused:
                raise _conflict(f"{' and '.join(unused)} {_apply(unused)} only to a teacher with "
                                "[[teachers.deployments]]; add deployments or remove them")
        return self

    def _changed(self, *names: str) -> list[str]:
        # by value, not by model_fields_set: a stored config (runs.config_json, read back by
        # resume and replay) holds every setting, the defaults too
        return [n for n in names if getattr(self, n) != type(self).model_fields[n].default]

    @property
    def is_self(self) -> bool:
        return self.model == "self"

    def endpoints(self) -> list[DeploymentConfig]:
        """Where this teacher's requests go: its deployments, or the teacher's own
        model/api_base/key as one (what preflight checks and the client's secrets read)."""
        if self.deployments:
            return [d if d.model else d.model_copy(update={"model": self.model}) for d in self.deployments]
        return [DeploymentConfig(model=self.model, api_base=self.api_base, api_key_env=self.api_key_env,
                                 rpm=self.rpm, tpm=self.tpm)]
