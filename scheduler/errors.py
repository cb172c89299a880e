"""Errors raised when a configuration or input file is rejected.

Every loader validates a whole file before anything takes effect and reports each problem in one line that
names the file, the field and what would be accepted::

    >>> raise ConfigError("seeds/accelerators.yaml", "models[3].kind", "'tpu' is not allowed",
    ...                   allowed=["gpu", "npu"])
    Traceback (most recent call last):
    ...
    scheduler.errors.ConfigError: seeds/accelerators.yaml: models[3].kind: 'tpu' is not allowed (allowed: gpu, npu)

A document with several problems reports all that validation found, one line each (``problems`` lists them)::

    >>> from pydantic import BaseModel
    >>> class Spec(BaseModel):
    ...     workers: int
    ...     name: str
    >>> try:
    ...     validate_model(Spec, {"workers": "many"}, "job.yaml")
    ... except ConfigError as err:
    ...     print(err)
    job.yaml: workers: Input should be a valid integer, unable to parse string as an integer (got 'many')
    job.yaml: name: Field required
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A file or document that cannot be used as given; ``str(err)`` is a one-line, actionable message."""

    def __init__(
        self,
        source: str | Path,
        field: str,
        problem: str,
        allowed: Iterable[str] | None = None,
        also: Sequence[ConfigError] = (),
    ) -> None:
        self.source = str(source)
        self.field = field
        self.problem = problem
        self.allowed = list(allowed) if allowed is not None else None
        #: Further problems found in the same document, in the order validation found them.
        self.also = tuple(also)
        suffix = f" (allowed: {', '.join(self.allowed)})" if self.allowed else ""
        location = f"{self.source}: {field}: " if field else f"{self.source}: "
        self.line = f"{location}{problem}{suffix}"
        super().__init__("\n".join(dict.fromkeys([self.line, *(e.line for e in self.also)])))

    @property
    def problems(self) -> list[ConfigError]:
        """This problem and the others found with it."""
        return [self, *self.also]


def field_path(loc: Sequence[int | str]) -> str:
    """Render a pydantic location tuple as ``models[3].peak_tflops.fp16``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def from_validation_error(source: str | Path, err: ValidationError, prefix: str = "") -> ConfigError:
    """Turn a pydantic ``ValidationError`` into a :class:`ConfigError`: one line per error, the first in front."""
    first, *rest = (_one_error(source, e, prefix) for e in err.errors())
    return ConfigError(first.source, first.field, first.problem, first.allowed, also=rest)


def _one_error(source: str | Path, first: Any, prefix: str) -> ConfigError:
    loc = tuple(first["loc"])
    # Pydantic adds the tag of a discriminated union or the validator name to ``loc``; keep only real fields.
    field = field_path([p for p in loc if not (isinstance(p, str) and p.startswith("function-"))])
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    allowed: list[str] | None = None
    ctx = first.get("ctx") or {}
    if "expected" in ctx:
        allowed = [s.strip().strip("'") for s in str(ctx["expected"]).replace(" or ", ",").split(",")]
        allowed = [a for a in allowed if a]
    message = str(first["msg"])
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    elif "input" in first and first["type"] not in ("missing",):
        shown = repr(first["input"])
        if len(shown) <= 60:
            message = f"{message} (got {shown})"
    return ConfigError(source, field, message, allowed)


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file whose top level must be a mapping; malformed YAML becomes a :class:`ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read file: {exc.strerror or exc}") from exc
    return parse_yaml_mapping(text, path)


def parse_yaml_mapping(text: str, source: str | Path) -> dict[str, Any]:
    """Parse YAML text whose top level must be a mapping."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(source, "", f"malformed YAML: {where}{problem}") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(source, "", f"top level must be a mapping, got {type(data).__name__}")
    return dict(data)


def validate_model(model: type[M], data: Any, source: str | Path, prefix: str = "") -> M:
    """Validate ``data`` as ``model``, turning pydantic's error into a one-line :class:`ConfigError`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(source, exc, prefix) from exc
