"""The JSON Schema check (schemas/dossier.schema.json, 2020-12, formats really checked).

A compiled validator (jsonschema-rs, ~0.02 ms with the format callbacks) answers "valid?" first; only a
dossier it finds invalid goes through jsonschema (~0.6 ms), which lists every violation. The jsonschema validator
here reads ``pattern`` as ECMA-262 and jsonschema-rs do (``_ecma_pattern``); both agree on every input the tests try
(tests/test_schema_engines.py), and jsonschema alone decides what a receipt says.
Messages are built from the failing keyword and the schema, never from jsonschema's own message, which
quotes the value found (receipts carry no personal data).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from functools import cache, partial
from typing import TYPE_CHECKING, Any

import jsonschema_rs

from gateway.errors import Problem
from gateway.resources import load_schema

if TYPE_CHECKING:  # jsonschema takes 80 ms to import: loaded on the first validation, not by every admin command
    from jsonschema import Draft202012Validator, FormatChecker
    from jsonschema.exceptions import ValidationError

_REQUIRED_FORMATS = ("date", "date-time")


@cache
def format_checker() -> FormatChecker:
    """jsonschema's format checks; refuses to run without the real ones."""
    from jsonschema import FormatChecker

    checker = FormatChecker()
    missing = [f for f in _REQUIRED_FORMATS if f not in checker.checkers]
    if missing:
        raise RuntimeError(f"jsonschema format checks missing for {missing}: install jsonschema[format]")
    return checker


@cache
def dossier_validator() -> Draft202012Validator:
    """The compiled validator, built once, reading ``pattern`` as JSON Schema does (ECMA-262)."""
    from jsonschema import Draft202012Validator, validators

    ecma = validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})
    return ecma(load_schema("dossier.schema.json"), format_checker=format_checker())  # type: ignore[no-any-return]


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """jsonschema's ``pattern`` with ECMA-262's meaning, as jsonschema-rs has it: Python's own ``$`` also matches
    before a final newline, and its ``\\d`` takes any script's digits, so ``"abc\\n"`` would pass as a message id
    and ``CHE-١٢٣.…`` as a UID."""
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not _ecma(pattern).search(instance):
        yield ValidationError(f"does not match {pattern!r}")


@cache
def _ecma(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled with ASCII classes and its closing ``$`` as the very end (every pattern of the
    schema uses ``$`` only there)."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern, re.ASCII)


@cache
def fast_validator() -> jsonschema_rs.Draft202012Validator:
    """The same schema compiled by jsonschema-rs: the quick yes/no of the common case.

    Formats are judged by jsonschema's own checks (the engines differ: jsonschema-rs takes a leap second).
    """
    checker = format_checker()
    formats = {name: partial(checker.conforms, format=name) for name in checker.checkers}
    return jsonschema_rs.Draft202012Validator(
        load_schema("dossier.schema.json"), formats=formats, validate_formats=True
    )


def schema_problems(document: dict[str, Any]) -> list[Problem]:
    """Every schema violation of ``document`` as DOSSIER_SCHEMA problems at their JSON pointer."""
    plain = _plain(document)
    if fast_validator().is_valid(plain):
        return []
    # never valid where the compiled check says it is not, should the engines ever differ
    return listed_problems(plain) or [Problem("DOSSIER_SCHEMA", "", "does not match the schema")]


def listed_problems(document: dict[str, Any]) -> list[Problem]:
    """What jsonschema finds wrong with ``document`` (Decimals already made plain), sorted by path."""
    found: dict[tuple[str, str], Problem] = {}
    for error in dossier_validator().iter_errors(document):
        for leaf in _leaves(error):
            path = "".join(f"/{part}" for part in leaf.absolute_path)
            message = describe(leaf)
            found.setdefault((path, message), Problem("DOSSIER_SCHEMA", path, message))
    return [found[k] for k in sorted(found)]


def _leaves(error: ValidationError) -> list[ValidationError]:
    """The most specific errors under ``anyOf``: the branch that got furthest, not every alternative."""
    if error.validator in ("anyOf", "oneOf") and error.context:
        typed = [e for e in error.context if e.validator != "type"]
        if typed:
            return [leaf for e in typed for leaf in _leaves(e)]
    return [error]


def describe(error: ValidationError) -> str:
    """A message naming the rule that failed, built from the schema only."""
    keyword, rule = error.validator, error.validator_value
    if keyword == "required":
        missing = [name for name in rule if isinstance(error.instance, dict) and name not in error.instance]
        return f"required property {', '.join(repr(m) for m in missing) or 'missing'} is missing"
    if keyword == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed) if isinstance(error.instance, dict) else []
        names = ", ".join(repr(k) if k.isidentifier() and len(k) <= 40 else "(unnamed)" for k in extra[:5])
        return f"unknown property {names} is not allowed"
    messages = {
        "type": lambda: f"must be of type {rule if isinstance(rule, str) else ' or '.join(rule)}",
        "pattern": lambda: f"must match the pattern {rule}",
        "format": lambda: f"must be a valid {rule} (RFC 3339)" if "date" in rule else f"must be a valid {rule}",
        "enum": lambda: f"must be one of {', '.join(str(v) for v in rule)}",
        "const": lambda: f"must be {rule!r}",
        "minLength": lambda: f"must have at least {rule} character(s)",
        "maxLength": lambda: f"must have at most {rule} characters",
        "minimum": lambda: f"must be at least {rule}",
        "maximum": lambda: f"must be at most {rule}",
        "exclusiveMinimum": lambda: f"must be greater than {rule}",
        "exclusiveMaximum": lambda: f"must be less than {rule}",
        "minItems": lambda: f"must have at least {rule} item(s)",
        "maxItems": lambda: f"must have at most {rule} items",
        "not": lambda: "must not be null" if rule == {"type": "null"} else "is not allowed here",
        "anyOf": lambda: "does not match any allowed form",
    }
    return messages.get(keyword, lambda: f"violates the {keyword} rule")()


def _plain(value: Any) -> Any:
    """Decimals as ints/floats for the schema (the 2-decimal rule reads the Decimal text elsewhere)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and value.as_tuple().exponent >= 0 else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
