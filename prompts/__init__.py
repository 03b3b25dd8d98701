"""Prompt templates: packaged defaults (YAML + Jinja2) copied into workspaces.

`load_template(name, workspace)` reads the workspace's `prompts/NAME.yaml` when
it exists and the packaged default otherwise.  Every version used is recorded
in `prompt_versions` by the sha256 of its body (`record_prompt_version`), so a
teacher call or a run can always say which exact text produced it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .template import Template, TemplateError

__all__ = [
    "DEFAULTS_DIR",
    "SAMPLE_VARIABLES",
    "Template",
    "TemplateError",
    "copy_defaults",
    "default_path",
    "list_templates",
    "load_template",
    "record_prompt_version",
    "template_path",
    "workspace_dir",
]

DEFAULTS_DIR = Path(__file__).parent / "templates"
DEFAULT_NAMES = ("rationale", "refine", "student", "demonstration")

# Built-in values used to validate a template when the workspace pool is empty.
SAMPLE_VARIABLES: dict[str, Any] = {
    "question": "A baker makes 12 loaves a day and sells 3/4 of them at $2 each. How much money does he make in 5 days?",
    "answer_format": "number",
    "gold": "90",
    "previous": "He sells 3/4 of 12 = 9 loaves a day.\n9 loaves x $2 = $18 a day.\n$18 x 5 days = $90.\n#### 90",
    "demonstration": "He sells 3/4 of 12 = 9 loaves a day.\n9 loaves x $2 = $18 a day.\n$18 x 5 days = $90.\n#### 90",
    "student_output": "12 loaves x $2 = $24 a day. $24 x 5 = $120.\n#### 120",
    "rationale": "He sells 3/4 of 12 = 9 loaves a day.\n9 loaves x $2 = $18 a day.\n$18 x 5 days = $90.\n#### 90",
}


def workspace_dir(workspace: str | Path) -> Path:
    return Path(workspace) / "prompts"


def default_path(name: str) -> Path:
    return DEFAULTS_DIR / f"{name}.yaml"


def template_path(name: str, workspace: str | Path | None = None) -> Path:
    """The file `load_template` would read: the workspace copy, else the default."""
    _check_name(name)
    if workspace is not None:
        p = workspace_dir(workspace) / f"{name}.yaml"
        if p.exists():
            return p
    p = default_path(name)
    if p.exists():
        return p
    known = ", ".join(list_templates(workspace))
    raise TemplateError(f"no template named {name!r}; known templates: {known}")


def load_template(name: str, workspace: str | Path | None = None) -> Template:
    t = Template.from_file(template_path(name, workspace))
    if t.name != name:
        raise TemplateError(f"the file declares name {t.name!r} but is loaded as {name!r}; make them equal", path=t.path, line=1)
    return t


def list_templates(workspace: str | Path | None = None) -> list[str]:
    names = {p.stem for p in DEFAULTS_DIR.glob("*.yaml")}
    if workspace is not None and workspace_dir(workspace).is_dir():
        names |= {p.stem for p in workspace_dir(workspace).glob("*.yaml")}
    return sorted(names)


def copy_defaults(dest_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Copy the packaged templates into `dest_dir` (a workspace's `prompts/`).
    Existing files are kept unless `overwrite`: they are the user's edits."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sorted(DEFAULTS_DIR.glob("*.yaml")):
        target = dest / src.name
        if target.exists() and not overwrite:
            continue
        tmp = target.with_suffix(".yaml.tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(target)  # atomic: never a half-copied template
        written.append(target)
    return written


def record_prompt_version(store: Any, template: Template) -> str:
    """Insert this template version into prompt_versions (idempotent); return its
    id (`template.version`: the sha256 of the body, as the store computes it)."""
    return store.record_prompt_version(template.name, template.body)


def _check_name(name: str) -> None:
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise TemplateError(f"invalid template name {name!r}: use letters, digits, '-' or '_'")
