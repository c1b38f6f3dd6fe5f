"""Business rules the schema cannot express: check digits, date order, two decimals, attachment bytes.

Each rule is defensive: a value of the wrong type was reported by the schema already and is skipped here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from gateway.errors import Problem
from gateway.handlers.countries import COUNTRIES
from gateway.handlers.parse import Parsed
from gateway.limits import Limits

SWISS_TIME = ZoneInfo("Europe/Zurich")
_UID = re.compile(r"CHE-(\d{3})\.(\d{3})\.(\d{3})", re.ASCII)  # fullmatch: not before a final newline
_AHV = re.compile(r"756\.\d{4}\.\d{4}\.\d{2}", re.ASCII)
_COUNTRY_SHAPE = re.compile(r"[A-Z]{2}")
_UID_WEIGHTS = (5, 4, 3, 2, 7, 6, 5, 4)
_AMOUNT_KEYS = ("gross_hourly_wage_chf", "amount_chf", "control_costs_chf")


def uid_valid(uid: str) -> bool:
    """The Swiss UID check digit (eCH-0097: mod 11 over the first eight digits, weights 5 4 3 2 7 6 5 4)."""
    match = _UID.fullmatch(uid)
    if not match:
        return False
    digits = [int(c) for c in "".join(match.groups())]
    check = 11 - sum(d * w for d, w in zip(digits[:8], _UID_WEIGHTS, strict=True)) % 11
    return check != 10 and (check % 11) == digits[8]


def ahv_valid(number: str) -> bool:
    """The AHV/AVS number's EAN-13 check digit."""
    if not _AHV.fullmatch(number):
        return False
    digits = [int(c) for c in number.replace(".", "")]
    total = sum(d * (3 if i % 2 else 1) for i, d in enumerate(digits[:12]))
    return (10 - total % 10) % 10 == digits[12]


def rule_problems(parsed: Parsed, now: datetime, limits: Limits) -> list[Problem]:
    """Every business-rule problem of a parsed dossier."""
    doc = parsed.document
    envelope = _dict(doc.get("envelope"))
    dossier = _dict(doc.get("dossier"))
    problems = _check_digits(dossier) + _countries(dossier) + _dates(envelope, dossier, now, limits)
    return problems + _decimals(dossier, "/dossier") + _attachments(parsed, dossier)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _check_digits(dossier: dict[str, Any]) -> list[Problem]:
    problems = []
    uid = _dict(dossier.get("employer")).get("uid")
    if isinstance(uid, str) and _UID.fullmatch(uid) and not uid_valid(uid):
        problems.append(Problem("UID_CHECKSUM", "/dossier/employer/uid", "the UID check digit is wrong"))
    for i, worker in enumerate(_list(dossier.get("workers"))):
        ahv = _dict(worker).get("ahv_number")
        if isinstance(ahv, str) and _AHV.fullmatch(ahv) and not ahv_valid(ahv):
            problems.append(
                Problem("AHV_CHECKSUM", f"/dossier/workers/{i}/ahv_number", "the AHV number's check digit is wrong")
            )
    return problems


def _countries(dossier: dict[str, Any]) -> list[Problem]:
    """Country codes of the right shape (the schema checks that) that ISO 3166-1 does not assign."""
    found = [("/dossier/employer/address/country", _dict(_dict(dossier.get("employer")).get("address")).get("country"))]
    found += [
        (f"/dossier/workers/{i}/nationality", _dict(worker).get("nationality"))
        for i, worker in enumerate(_list(dossier.get("workers")))
    ]
    return [
        Problem("COUNTRY_CODE", path, "not a country code of ISO 3166-1 alpha-2")
        for path, code in found
        if isinstance(code, str) and _COUNTRY_SHAPE.fullmatch(code) and code not in COUNTRIES
    ]


def _day(value: Any) -> date | None:
    try:
        return date.fromisoformat(value) if isinstance(value, str) and len(value) == 10 else None
    except ValueError:
        return None


def _dates(envelope: dict[str, Any], dossier: dict[str, Any], now: datetime, limits: Limits) -> list[Problem]:
    problems = []
    today = now.astimezone(SWISS_TIME).date()
    created = envelope.get("created_at")
    try:
        moment = datetime.fromisoformat(created.replace("z", "Z")) if isinstance(created, str) else None
    except ValueError:
        moment = None
    if (
        moment is not None
        and moment.tzinfo is not None
        and moment > now + timedelta(seconds=limits.max_future_skew_seconds)
    ):
        problems.append(
            Problem(
                "DATE_IN_FUTURE",
                "/envelope/created_at",
                f"created_at may be at most {limits.max_future_skew_seconds // 60} minutes in the future",
            )
        )
    control = _dict(dossier.get("control"))
    control_date = _day(control.get("date"))
    if control_date and control_date > today:
        problems.append(Problem("DATE_IN_FUTURE", "/dossier/control/date", "the control date is in the future"))
    period = _dict(control.get("period"))
    start, end = _day(period.get("from")), _day(period.get("to"))
    if start and end and start > end:
        problems.append(Problem("DATE_ORDER", "/dossier/control/period", "period.from must not be after period.to"))
    if end and control_date and end > control_date:
        problems.append(
            Problem(
                "DATE_ORDER",
                "/dossier/control/period/to",
                "the controlled period must end on or before the control date",
            )
        )
    for part in ("decision", "sanction"):
        decided = _day(_dict(dossier.get(part)).get("decided_on"))
        if decided and decided > today:
            problems.append(
                Problem("DATE_IN_FUTURE", f"/dossier/{part}/decided_on", "the decision date is in the future")
            )
    return problems


def _amounts(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in _AMOUNT_KEYS:
                yield f"{path}/{key}", item
            else:
                yield from _amounts(item, f"{path}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _amounts(item, f"{path}/{i}")


def _decimals(dossier: dict[str, Any], root: str) -> list[Problem]:
    """Amounts in CHF have at most two decimals, read from the number's decimal text (no float trap)."""
    return [
        Problem("AMOUNT_DECIMALS", path, "amounts in CHF may have at most 2 decimals")
        for path, amount in _amounts(dossier, root)
        if isinstance(amount, Decimal) and amount.is_finite() and amount.normalize().as_tuple().exponent < -2
    ]


def _attachments(parsed: Parsed, dossier: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    named: set[str] = set()
    for i, item in enumerate(_list(dossier.get("attachments"))):
        attachment, where = _dict(item), f"/dossier/attachments/{i}"
        name = attachment.get("filename")
        if not isinstance(name, str):
            continue
        if name in named:
            problems.append(
                Problem("ATTACHMENT_DUPLICATE", f"{where}/filename", "two attachments have the same filename")
            )
            continue
        named.add(name)
        facts = (
            _facts_json(attachment, where, problems)
            if parsed.form == "json"
            else _facts_zip(parsed, name, attachment, where, problems)
        )
        if facts is None:
            continue
        size, digest, is_pdf = facts
        if isinstance(attachment.get("size"), int) and size != attachment["size"]:
            problems.append(Problem("ATTACHMENT_SIZE", f"{where}/size", "size does not match the attachment's bytes"))
        if isinstance(attachment.get("sha256"), str) and digest != attachment["sha256"].lower():  # hex in any case
            problems.append(
                Problem("ATTACHMENT_SHA256", f"{where}/sha256", "sha256 does not match the attachment's bytes")
            )
        if not is_pdf:
            problems.append(
                Problem("ATTACHMENT_NOT_PDF", where, "the attachment is not a PDF (it must start with %PDF-)")
            )
    if parsed.form == "zip":
        for name in sorted(set(parsed.files) - named):
            index = sorted(parsed.files).index(name)
            problems.append(
                Problem("ATTACHMENT_EXTRA", f"/package/{index}", "the package holds a file no attachment names")
            )
    return problems


def _facts_json(attachment: dict[str, Any], where: str, problems: list[Problem]) -> tuple[int, str, bool] | None:
    content = attachment.get("content_base64")
    if content is None:
        problems.append(
            Problem(
                "ATTACHMENT_MISSING",
                f"{where}/content_base64",
                "a .json dossier embeds each attachment in content_base64",
            )
        )
        return None
    if not isinstance(content, str):
        return None
    try:
        data = base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        problems.append(Problem("ATTACHMENT_BASE64", f"{where}/content_base64", "content_base64 is not valid base64"))
        return None
    return len(data), hashlib.sha256(data).hexdigest(), data.startswith(b"%PDF-")


def _facts_zip(
    parsed: Parsed, name: str, attachment: dict[str, Any], where: str, problems: list[Problem]
) -> tuple[int, str, bool] | None:
    if "content_base64" in attachment:
        problems.append(
            Problem(
                "RULE_VIOLATION",
                f"{where}/content_base64",
                "in a package the attachment is a file beside dossier.json, not content_base64",
            )
        )
    facts = parsed.files.get(name)
    if facts is None:
        problems.append(
            Problem("ATTACHMENT_MISSING", f"{where}/filename", "the package lacks the file this attachment names")
        )
        return None
    return facts.size, facts.sha256, facts.is_pdf
