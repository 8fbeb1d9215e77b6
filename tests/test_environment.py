"""requirements.txt (exact pins), environment.yml (same pins for conda) and pyproject.toml (ranges) agree."""

from __future__ import annotations

import re
import tomllib

import yaml
from packaging.requirements import Requirement

from qpmlib.paths import REPO_ROOT


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{line}: requirements must be exact pins"
        pins[_norm(req.name)] = spec.version
    return pins


def test_environment_yml_mirrors_requirements_pins():
    req = _pins((REPO_ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip_section) == req


def test_pins_satisfy_the_library_ranges_and_cover_every_dependency():
    req = _pins((REPO_ROOT / "requirements.txt").read_text().splitlines())
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    for line in declared:
        dep = Requirement(line)
        name = _norm(dep.name)
        assert name in req, f"{dep.name} is declared in pyproject.toml but not pinned in requirements.txt"
        assert dep.specifier.contains(req[name]), f"pin {dep.name}=={req[name]} violates pyproject range {dep.specifier}"
        assert not any(s.operator == "==" for s in dep.specifier), f"{dep.name}: the library declares ranges, not pins"
