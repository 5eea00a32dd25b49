"""The two lock files: every pin in exactly one, and the `papers` extra pinned where it should be."""

import re
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


def test_no_distribution_is_pinned_twice():
    core, extras = _pins(ROOT / "requirements.lock"), _pins(ROOT / "requirements-extras.lock")
    assert not set(core) & set(extras)


def test_papers_extra_is_pinned_in_the_extras_lock():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = _pins(ROOT / "requirements-extras.lock")
    for requirement in project["optional-dependencies"]["papers"]:
        name, version = requirement.split("==")
        key = re.sub(r"[-_.]+", "-", name).lower()
        assert extras.get(key) == version, f"{requirement} is not pinned in requirements-extras.lock"


def test_installed_extras_match_their_pins():
    for name, version in _pins(ROOT / "requirements-extras.lock").items():
        assert metadata.version(name) == version, f"{name}: installed {metadata.version(name)}, pinned {version}"
