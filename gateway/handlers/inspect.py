"""Everything the gateway checks about one file on its own: parse, schema, rules and the sender.

The pipeline's validate step and the offline `flam-gateway check` both call :func:`inspect_file`, so a
vendor sees exactly the errors the gateway would put in the receipt.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.errors import Problem, Rejected
from gateway.handlers.parse import Parsed, name_problems, read_dossier
from gateway.handlers.rules import rule_problems
from gateway.handlers.validate import schema_problems
from gateway.limits import Limits


@dataclass(frozen=True)
class Inspection:
    """The parsed dossier (None if unreadable) and every problem found."""

    parsed: Parsed | None
    problems: list[Problem]


def envelope_of(parsed: Parsed | None) -> dict[str, Any]:
    """The envelope object of a parsed dossier, or {} when there is none."""
    envelope = parsed.document.get("envelope") if parsed else None
    return envelope if isinstance(envelope, dict) else {}


def inspect_file(
    path: Path, sender_id: str | None, limits: Limits, now: datetime, file_name: str | None = None
) -> Inspection:
    """All problems of the file at ``path`` (dropped as ``file_name``) sent by ``sender_id``, the writing account."""
    bad_name = name_problems(file_name if file_name is not None else path.name)
    if bad_name:
        return Inspection(None, bad_name)
    try:
        parsed = read_dossier(path, limits)
    except Rejected as rejected:
        return Inspection(None, rejected.problems)
    problems = schema_problems(parsed.document) + rule_problems(parsed, now, limits)
    claimed = envelope_of(parsed).get("sender_id")
    if sender_id is not None and isinstance(claimed, str) and claimed != sender_id:
        problems.append(
            Problem(
                "SENDER_MISMATCH", "/envelope/sender_id", "sender_id must be the organ whose account wrote the file"
            )
        )
    return Inspection(parsed, problems)
