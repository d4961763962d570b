"""One-line user errors from pydantic validation errors (training configs, model configs).

pydantic's own ``ValidationError`` text spans several lines, carries documentation URLs and is a
plain ``ValueError``, which the CLI treats as a bug. :func:`config_error` turns it into a
:class:`~fetalplanes.core.errors.UsageError` naming the source, each bad field by its dotted path,
what was given, and the valid options (the literal values, or the valid field names for an
unknown field). Duck-typed on ``err.errors()`` and ``Model.model_fields``, so ``core`` does not
import pydantic.
"""

from __future__ import annotations

from typing import Any

from fetalplanes.core.errors import UsageError

__all__ = ["config_error", "yaml_problem"]

_VALUE_ERROR_PREFIX = "Value error, "


def config_error(err: Any, model: type, source: str) -> UsageError:
    """A :class:`UsageError` ``"invalid config (SOURCE): data.task: ...; optim.lr: ..."`` (one line).

    ``err``: a ``pydantic.ValidationError`` raised while building ``model`` (a pydantic model
    class) from the mapping read from ``source`` (a file, a preset or "defaults").
    """
    problems = [_problem(e, model) for e in err.errors()]
    return UsageError(f"invalid config ({source}): " + "; ".join(problems))


def yaml_problem(err: Exception) -> str:
    """One line for a PyYAML parse error: ``"expected ',' or ']' at line 2, column 1"``."""
    problem, mark = getattr(err, "problem", None), getattr(err, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(err).split())


def _problem(e: dict[str, Any], model: type) -> str:
    loc = ".".join(str(part) for part in e.get("loc", ())) or "(top level)"
    kind, msg = e.get("type", ""), str(e.get("msg", "")).replace("\n", " ")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):  # a model's / a dataclass's unknown key
        valid = _fields_at(model, e.get("loc", ())[:-1])
        return f"{loc}: unknown field" + (f"; valid fields are {valid}" if valid else "")
    if kind == "value_error":  # our own validators: the message already says what was given
        return f"{loc}: {msg.removeprefix(_VALUE_ERROR_PREFIX)}"
    return f"{loc}: {msg}, got {_short(e.get('input'))}"


def _field_names(model: type) -> list[str]:
    """A pydantic model's or a dataclass's field names (a config section may be either)."""
    return list(getattr(model, "model_fields", None) or getattr(model, "__dataclass_fields__", {}))


def _fields_at(model: type, path: tuple[Any, ...]) -> list[str]:
    """The field names of the (nested) model at ``path``; [] when the path leaves the models."""
    for part in path:
        field = getattr(model, "model_fields", {}).get(part)
        model = getattr(field, "annotation", None)
        if not isinstance(model, type):
            return []
    return _field_names(model)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
