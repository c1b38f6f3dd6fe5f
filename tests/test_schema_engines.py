"""The compiled schema check (jsonschema-rs) may only say "valid" where jsonschema finds nothing wrong.

The gateway asks the compiled validator first and jsonschema only for a dossier it calls invalid, so a
receipt always lists what jsonschema finds. These tests hold the two to the same verdict on every hostile
case of the corpus and on random changes to valid dossiers of each message type, with values chosen where
the engines could differ: calendar edge cases, leap seconds, Unicode digits, trailing newlines, big numbers.
"""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

from hostile_corpus import CASES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import samples
from gateway.errors import Rejected
from gateway.handlers.parse import parse_json
from gateway.handlers.validate import _plain, fast_validator, listed_problems, schema_problems
from gateway.limits import Limits

MESSAGE_TYPES = ("control_mandate", "control_report", "violation_report", "sanction_decision", "status_update")
TRICKY = [
    "2026-02-29", "2024-02-29", "2026-13-01", "2026-00-10", "20260101", "2026-W01-1", "2026-1-1", " 2026-01-01",
    "2026-01-01\n", "٢٠٢٦-٠١-٠١", "2026-01-01T00:00:00Z", "2026-01-01T23:59:60Z", "2026-06-30T23:59:60Z",
    "2026-01-01t00:00:00z", "2026-01-01T00:00:00+25:00", "2026-01-01 00:00:00Z", "2026-01-01T00:00:00.123456789Z",
    "2026-01-01T24:00:00Z", "2026-01-01T00:00:00", "CHE-123.456.789", "CHE-123.456.789\n", "CHE-١٢٣.456.789",
    "756.1234.5678.97", "756.١٢٣٤.5678.97", "ZH", "zh", "ZÜ", "a" * 36, "a" * 37, "", "x.pdf", "X.PDF", "a\nb.pdf",
    "0" * 64, "0" * 63 + "G", "kv-bau-zh", "-kv", "ａｂｃ", "\x00", "\ud7ff",
]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(TRICKY),
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-(10**9), max_value=10**9),
    st.text(max_size=12),
    st.lists(st.sampled_from(TRICKY), max_size=2),
    st.dictionaries(st.sampled_from(["a", "type", "id"]), st.sampled_from(TRICKY), max_size=2),
)


def same_verdict(document: dict[str, Any]) -> None:
    listed = listed_problems(_plain(document))
    assert fast_validator().is_valid(_plain(document)) == (not listed), "the engines differ"
    assert schema_problems(document) == listed


def test_every_hostile_json_case_gets_the_same_problems_from_both_engines() -> None:
    checked = 0
    for case in CASES:
        try:
            document = parse_json(case.data, Limits())
        except Rejected:
            continue  # not JSON: never reaches the schema
        same_verdict(document)
        checked += 1
    assert checked > 20


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a document, containers included."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    return [prefix] + [p for key, child in children for p in _paths(child, (*prefix, key))]


def _valid(message_type: str, embed: bool) -> dict[str, Any]:
    pdf = samples.make_pdf(2_000, seed=7)
    doc = samples.make_dossier("kv-bau-zh", "pk-bau-zh", message_type=message_type, attachments=[("a.pdf", pdf)])
    if not embed:
        doc = samples.make_dossier("kv-bau-zh", "pk-bau-zh", message_type=message_type, embed=False)
    return json.loads(samples.dossier_bytes(doc), parse_float=Decimal)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(MESSAGE_TYPES),
    st.booleans(),
    st.lists(st.tuples(st.integers(min_value=0), st.sampled_from(["set", "delete", "add"]), VALUES), max_size=3),
)
def test_random_changes_to_a_valid_dossier_get_the_same_problems_from_both_engines(
    message_type: str, embed: bool, changes: list[tuple[int, str, Any]]
) -> None:
    document = _valid(message_type, embed)
    assert schema_problems(document) == []
    for index, action, value in changes:
        paths = _paths(document)
        path = paths[index % len(paths)]
        if not path:
            continue
        parent: Any = document
        for key in path[:-1]:
            parent = parent[key]
        if action == "set":
            parent[path[-1]] = copy.deepcopy(value)
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "add" and isinstance(parent[path[-1]], dict):
            parent[path[-1]]["extra_field"] = copy.deepcopy(value)
    same_verdict(document)


SPEC_SHAPED = {  # DOSSIER-SPEC's fields with a pattern, each with a value that only Python's own `re` would take
    "message_id": "abc\n",
    "dossier_id": "X\n",
    "sender_id": "kv-bau-zh\n",
    "created_at": "2026-01-01T00:00:00+01:00\n",
    "uid": "CHE-١١٦.281.710",
    "ahv_number": "756.١٢٣٤.5678.97",
    "nationality": "DE\n",
    "recipient_id": "pk-bau-zh\n",
    "country": "CH\n",
    "filename": "a.pdf\n",
    "sha256": "0" * 64 + "\n",
}


def test_a_value_with_a_trailing_newline_or_digits_of_another_script_is_refused_at_its_place() -> None:
    document = _valid("control_report", embed=True)
    for name, value in SPEC_SHAPED.items():
        changed = copy.deepcopy(document)
        [path, *_] = [p for p in _paths(changed) if p and p[-1] == name]
        parent: Any = changed
        for key in path[:-1]:
            parent = parent[key]
        parent[name] = value
        same_verdict(changed)
        where = "".join(f"/{part}" for part in path)
        assert [p.path for p in schema_problems(changed)] == [where], name
