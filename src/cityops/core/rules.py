"""Rule files: YAML under ``src/cityops/rules/<domain>/``, overridable per city.

A city overrides a file by putting one with the same relative path under
``CITYOPS_RULES_DIR`` (DESIGN §1.4): rules are data, never code edits. Every file names its
``source`` (standard and clause, or the city document); files are validated by a pydantic model
on load, and a bad file fails loudly with the file and the field.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from cityops.settings import get_settings

DEFAULT_RULES = Path(__file__).resolve().parents[1] / "rules"

M = TypeVar("M", bound=BaseModel)


class RuleFileError(RuntimeError):
    """A rule file is missing or invalid; the message names the file and the field."""


def rule_path(relative: str, rules_dir: Path | None = None) -> Path:
    override_dir = rules_dir if rules_dir is not None else get_settings().rules_dir
    if override_dir is not None:
        candidate = Path(override_dir) / relative
        if candidate.is_file():
            return candidate
    path = DEFAULT_RULES / relative
    if not path.is_file():
        raise RuleFileError(f"rule file {relative} not found in {DEFAULT_RULES}")
    return path


@lru_cache(maxsize=64)
def _read_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def load_rules(relative: str, model: type[M], rules_dir: Path | None = None) -> M:
    """Load and validate one rule file."""
    path = rule_path(relative, rules_dir)
    try:
        data = _read_yaml(path)
    except yaml.YAMLError as exc:
        raise RuleFileError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RuleFileError(f"{path}: field {where}: {first['msg']}") from exc
