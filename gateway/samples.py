"""Valid dossiers, PDFs and packages for the demo, the tests and the benchmarks.

``make_dossier`` builds a document valid for each message type; tests then break one rule at a time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import uuid
import zipfile
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from gateway.handlers.rules import SWISS_TIME

_UID_WEIGHTS = (5, 4, 3, 2, 7, 6, 5, 4)


def make_uid(n: int = 11628171) -> str:
    """A valid ``CHE-ddd.ddd.ddd`` UID: the eight digits of ``n`` (a neighbour when 10 would be the check)."""
    while True:
        digits = [int(c) for c in f"{n % 10**8:08d}"]
        check = 11 - sum(d * w for d, w in zip(digits, _UID_WEIGHTS, strict=True)) % 11
        if check != 10:
            text = "".join(map(str, digits)) + str(check % 11)
            return f"CHE-{text[:3]}.{text[3:6]}.{text[6:]}"
        n += 1


def make_ahv(n: int = 123456789) -> str:
    """A valid AHV number ``756.dddd.dddd.dd`` with its EAN-13 check digit."""
    body = [int(c) for c in f"756{n % 10**9:09d}"]
    check = (10 - sum(d * (3 if i % 2 else 1) for i, d in enumerate(body)) % 10) % 10
    text = "".join(map(str, body)) + str(check)
    return f"{text[:3]}.{text[3:7]}.{text[7:11]}.{text[11:]}"


def make_pdf(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that start like a PDF and are otherwise incompressible (like scanned reports)."""
    head = b"%PDF-1.7\n"
    return (head + random.Random(seed).randbytes(max(0, size - len(head))))[:size]


def _attachment(name: str, data: bytes, embed: bool) -> dict[str, Any]:
    item: dict[str, Any] = {
        "filename": name,
        "media_type": "application/pdf",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    if embed:
        item["content_base64"] = base64.b64encode(data).decode("ascii")
    return item


def make_dossier(
    sender_id: str,
    recipient_id: str,
    *,
    message_type: str = "control_report",
    message_id: str | None = None,
    dossier_id: str = "ZH-2026-00417",
    attachments: Iterable[tuple[str, bytes]] | None = None,
    embed: bool = True,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A valid dossier of ``message_type`` (``embed=False``: attachments travel beside it in a package)."""
    now = now or datetime.now(UTC)
    today = now.astimezone(SWISS_TIME).date()
    employer = {
        "name": "Muster Bau GmbH",
        "uid": make_uid(),
        "posting": False,
        "address": {"street": "Hauptstrasse 1", "postal_code": "8400", "city": "Winterthur", "country": "CH"},
    }
    workplace = {"street": "Seestrasse 12", "postal_code": "8002", "city": "Zürich", "canton": "ZH"}
    control = {
        "kind": "wage",
        "date": (today - timedelta(days=3)).isoformat(),
        "period": {"from": (today - timedelta(days=90)).isoformat(), "to": (today - timedelta(days=30)).isoformat()},
        "scope": "all",
    }
    worker = {
        "family_name": "Muster",
        "given_names": "Hans",
        "birth_date": "1985-03-02",
        "nationality": "DE",
        "function": "Maurer",
        "gross_hourly_wage_chf": Decimal("31.50"),
        "weekly_hours": Decimal("42.5"),
        "social_insurance_no": "65 170839 J 003",
        "ahv_number": make_ahv(),
    }
    finding = {
        "category": "minimum_wage",
        "description": "Stundenlohn unter Mindestlohn Kat. Q",
        "amount_chf": Decimal("1840.00"),
    }
    parts: dict[str, dict[str, Any]] = {
        "control_mandate": {
            "employer": employer,
            "workplace": workplace,
            "control": {"kind": "wage", "period": control["period"]},
        },
        "control_report": {
            "employer": employer,
            "workplace": workplace,
            "control": control,
            "workers": [worker],
            "findings": [finding],
        },
        "violation_report": {
            "employer": employer,
            "control": control,
            "findings": [finding],
            "decision": {
                "kind": "contractual_penalty",
                "amount_chf": Decimal("2500.00"),
                "control_costs_chf": Decimal("850.00"),
                "decided_on": today.isoformat(),
            },
        },
        "sanction_decision": {
            "employer": employer,
            "sanction": {
                "kind": "fine",
                "amount_chf": Decimal("5000"),
                "ban_years": None,
                "decided_on": today.isoformat(),
            },
        },
        "status_update": {"status": {"code": "in_progress", "text": "Dossier in Bearbeitung"}},
    }
    dossier = dict(parts[message_type])
    dossier["attachments"] = [_attachment(name, data, embed) for name, data in (attachments or [])]
    return {
        "envelope": {
            "schema_version": "1.0",
            "message_id": message_id or str(uuid.uuid4()),
            "message_type": message_type,
            "sender_id": sender_id,
            "recipient_id": recipient_id,
            "dossier_id": dossier_id,
            "reference_message_id": str(uuid.uuid4()) if message_type == "status_update" else None,
            "created_at": (now - timedelta(minutes=1)).astimezone(SWISS_TIME).isoformat(timespec="seconds"),
            "test": False,
        },
        "dossier": dossier,
    }


def dossier_bytes(document: dict[str, Any]) -> bytes:
    """The dossier as UTF-8 JSON (Decimal amounts as their shortest float text: 31.50 -> 31.5, 0.07 -> 0.07)."""
    return json.dumps(_exact(document), ensure_ascii=False, indent=1).encode("utf-8")


def _exact(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and value.as_tuple().exponent >= 0 else float(value)
    if isinstance(value, dict):
        return {k: _exact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_exact(v) for v in value]
    return value


def write_package(path: Path, document: dict[str, Any], files: dict[str, bytes] | Iterable[tuple[str, bytes]]) -> Path:
    """A ``.zip`` package: ``dossier.json`` plus each attachment at the root (stored: PDFs do not compress)."""
    items = files.items() if isinstance(files, dict) else files
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("dossier.json", dossier_bytes(document))
        for name, data in items:
            archive.writestr(name, data)
    return path
