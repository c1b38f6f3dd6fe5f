"""A corpus of hostile and broken inputs, each with the receipt status it must get (nothing is delivered).

Cases are built in code so that each one says what it attacks; `CASES` is the list the test drops.
"""

from __future__ import annotations

import io
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from gateway import samples
from gateway.handlers.rules import SWISS_TIME

SENDER, RECIPIENT, OTHER, DISABLED = "kv-bau-zh", "pk-bau-zh", "canton-ge", "pk-off"
PDF = samples.make_pdf(3_000, seed=99)


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    status: int
    code: str


def doc(**kwargs: Any) -> dict[str, Any]:
    return samples.make_dossier(SENDER, RECIPIENT, attachments=[("a.pdf", PDF)], **kwargs)


def mutated(change: Callable[[dict[str, Any]], Any], **kwargs: Any) -> bytes:
    d = doc(**kwargs)
    change(d)
    return samples.dossier_bytes(d)


def zipped(entries: list[tuple[str | zipfile.ZipInfo, bytes]], *, dossier: dict[str, Any] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        if dossier is not None:
            zf.writestr("dossier.json", samples.dossier_bytes(dossier))
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def package_doc() -> dict[str, Any]:
    return samples.make_dossier(SENDER, RECIPIENT, attachments=[("a.pdf", PDF)], embed=False)


def link_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def encrypted_zip() -> bytes:
    raw = bytearray(zipped([("a.pdf", PDF)], dossier=package_doc()))
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):
        start = 0
        while (at := raw.find(sig, start)) != -1:
            flag_at = at + (6 if sig == b"PK\x03\x04" else 8)
            raw[flag_at] |= 0x01
            start = at + 4
    return bytes(raw)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(d: dict[str, Any]) -> None:
        *parents, last = path.strip("/").split("/")
        node: Any = d
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is _DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


_DELETE = object()


def _schema(path: str, value: Any) -> bytes:
    return mutated(_set(path, value))


UNREADABLE: list[tuple[str, bytes, str]] = [
    ("empty.json", b"", "FILE_EMPTY"),
    ("blank.json", b"   \n\t ", "FILE_EMPTY"),
    ("utf16le.json", b"\xff\xfe" + '{"a": 1}'.encode("utf-16-le"), "FILE_NOT_UTF8"),
    ("utf16be.json", b"\xfe\xff" + '{"a": 1}'.encode("utf-16-be"), "FILE_NOT_UTF8"),
    ("latin1.json", '{"name": "Zürich"}'.encode("latin-1"), "FILE_NOT_UTF8"),
    ("binary.json", bytes(range(256)) * 4, "FILE_NOT_UTF8"),
    ("truncated.json", samples.dossier_bytes(doc())[:500], "FILE_NOT_JSON"),
    ("array.json", b"[1, 2, 3]", "JSON_NOT_OBJECT"),
    ("string.json", b'"just a string"', "JSON_NOT_OBJECT"),
    ("number.json", b"42", "JSON_NOT_OBJECT"),
    ("null.json", b"null", "JSON_NOT_OBJECT"),
    ("nan.json", b'{"x": NaN}', "JSON_NUMBER"),
    ("infinity.json", b'{"x": Infinity}', "JSON_NUMBER"),
    ("neg-infinity.json", b'{"x": -Infinity}', "JSON_NUMBER"),
    ("huge-int.json", b'{"x": ' + b"9" * 5000 + b"}", "JSON_NUMBER"),
    ("huge-exponent.json", b'{"x": 1e999999}', "JSON_NUMBER"),
    ("long-number.json", b'{"x": 1234567890123456789012345678901234567890.5}', "JSON_NUMBER"),
    ("dup-key.json", b'{"envelope": {}, "envelope": {}}', "JSON_DUPLICATE_KEY"),
    ("dup-key-nested.json", b'{"envelope": {"test": true, "test": false}}', "JSON_DUPLICATE_KEY"),
    ("deep-arrays.json", b"[" * 100_000 + b"]" * 100_000, "JSON_TOO_DEEP"),
    ("deep-objects.json", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "JSON_TOO_DEEP"),
    ("trailing-garbage.json", samples.dossier_bytes(doc()) + b" trailing", "FILE_NOT_JSON"),
    ("single-quotes.json", b"{'envelope': {}}", "FILE_NOT_JSON"),
    ("comments.json", b'{"a": 1 /* comment */}', "FILE_NOT_JSON"),
    ("raw-control-char.json", b'{"a": "x\x01y"}', "FILE_NOT_JSON"),
    ("too-large.json", b"{" + b" " * 3_100_000 + b"}", "TOO_LARGE"),
    ("notes.txt", b"hello", "FILE_SUFFIX"),
    ("dossier.xml", b"<dossier/>", "FILE_SUFFIX"),
    ("report.pdf", PDF, "FILE_SUFFIX"),
    ("no-suffix", samples.dossier_bytes(doc()), "FILE_SUFFIX"),
    ("double.json.exe", samples.dossier_bytes(doc()), "FILE_SUFFIX"),
    ("garbage.zip", b"PK\x03\x04 not really a zip", "ZIP_INVALID"),
    ("empty.zip", zipped([]), "ZIP_NO_DOSSIER"),
    ("no-dossier.zip", zipped([("a.pdf", PDF)]), "ZIP_NO_DOSSIER"),
    ("slip.zip", zipped([("../evil.pdf", PDF)], dossier=package_doc()), "ZIP_UNSAFE_ENTRY"),
    ("slip-deep.zip", zipped([("a/../../../etc/passwd", b"x")], dossier=package_doc()), "ZIP_UNSAFE_ENTRY"),
    ("absolute.zip", zipped([("/etc/cron.d/x", b"x")], dossier=package_doc()), "ZIP_UNSAFE_ENTRY"),
    ("backslash.zip", zipped([("..\\evil.pdf", PDF)], dossier=package_doc()), "ZIP_UNSAFE_ENTRY"),
    ("folder.zip", zipped([("sub/", b"")], dossier=package_doc()), "ZIP_UNSAFE_ENTRY"),
    ("link.zip", zipped([(link_entry("a.pdf"), b"/etc/passwd")], dossier=package_doc()), "ZIP_UNSAFE_ENTRY"),
    ("control-name.zip", zipped([("a\x07.pdf", PDF)], dossier=package_doc()), "ZIP_UNSAFE_ENTRY"),
    ("newline-name.zip", zipped([("a.pdf\n", PDF)], dossier=package_doc()), "ZIP_UNSAFE_ENTRY"),
    ("encrypted.zip", encrypted_zip(), "ZIP_ENCRYPTED"),
    ("bomb-ratio.zip", zipped([("a.pdf", b"%PDF-" + bytes(8 * 1024 * 1024))], dossier=package_doc()), "ZIP_BOMB"),
    ("bomb-entries.zip", zipped([(f"f{i}.pdf", b"") for i in range(1001)], dossier=package_doc()), "ZIP_BOMB"),
    ("bad-dossier-json.zip", zipped([("dossier.json", b"{not json")]), "FILE_NOT_JSON"),
    ("name-\x01control.json", samples.dossier_bytes(doc()), "FILE_NAME"),
    ("name-\u202eright-to-left.json", samples.dossier_bytes(doc()), "FILE_NAME"),
    ("name-\u200finvisible-mark.json", samples.dossier_bytes(doc()), "FILE_NAME"),
    ("x" * 230 + ".json", samples.dossier_bytes(doc()), "FILE_NAME"),
]

SCHEMA: list[tuple[str, bytes]] = [
    ("no-envelope.json", _schema("/envelope", _DELETE)),
    ("no-dossier.json", _schema("/dossier", _DELETE)),
    ("version.json", _schema("/envelope/schema_version", "2.0")),
    ("version-number.json", _schema("/envelope/schema_version", 1)),
    ("msgid-long.json", _schema("/envelope/message_id", "a" * 37)),
    ("msgid-space.json", _schema("/envelope/message_id", "a b")),
    ("msgid-unicode.json", _schema("/envelope/message_id", "ａｂｃ")),
    ("msgid-newline.json", _schema("/envelope/message_id", "abc\n")),  # Python's `$` took it: abc\n.json.pgp
    ("msgtype.json", _schema("/envelope/message_type", "love_letter")),
    ("no-recipient.json", _schema("/envelope/recipient_id", _DELETE)),
    ("dossier-id-long.json", _schema("/envelope/dossier_id", "D" * 65)),
    ("dossier-id-chars.json", _schema("/envelope/dossier_id", "ZH 2026;drop")),
    ("created-words.json", _schema("/envelope/created_at", "yesterday")),
    ("created-no-offset.json", _schema("/envelope/created_at", "2026-11-20T17:45:00")),
    ("created-date-only.json", _schema("/envelope/created_at", "2026-11-20")),
    ("test-string.json", _schema("/envelope/test", "false")),
    ("envelope-extra.json", _schema("/envelope/priority", "urgent")),
    ("dossier-extra.json", _schema("/dossier/notes", "x")),
    ("top-extra.json", _schema("/signature", "x")),
    ("canton.json", _schema("/dossier/workplace/canton", "XX")),
    ("country-lower.json", _schema("/dossier/employer/address/country", "de")),
    ("workers-empty.json", _schema("/dossier/workers", [])),
    ("hours.json", _schema("/dossier/workers/0/weekly_hours", 101)),
    ("wage-negative.json", _schema("/dossier/workers/0/gross_hourly_wage_chf", Decimal("-1.00"))),
    ("wage-string.json", _schema("/dossier/workers/0/gross_hourly_wage_chf", "31.50")),
    ("finding-category.json", _schema("/dossier/findings/0/category", "bribery")),
    ("finding-long.json", _schema("/dossier/findings/0/description", "x" * 2001)),
    ("media-type.json", _schema("/dossier/attachments/0/media_type", "text/plain")),
    ("attachment-path.json", _schema("/dossier/attachments/0/filename", "../a.pdf")),
    ("attachment-exe.json", _schema("/dossier/attachments/0/filename", "a.exe")),
    ("sha-not-hex.json", _schema("/dossier/attachments/0/sha256", "g" * 64)),  # upper-case hex is hex
    ("size-zero.json", _schema("/dossier/attachments/0/size", 0)),
    ("control-kind.json", _schema("/dossier/control/kind", "vibes")),
    ("control-scope.json", _schema("/dossier/control/scope", "some")),
    ("uid-format.json", _schema("/dossier/employer/uid", "CHE-123")),
    ("uid-missing.json", _schema("/dossier/employer/uid", None)),
    ("ahv-format.json", _schema("/dossier/workers/0/ahv_number", "756.1234")),
    ("name-huge.json", _schema("/dossier/employer/name", "N" * 2_000_000)),
    ("status-no-reference.json", mutated(_set("/envelope/reference_message_id", None), message_type="status_update")),
    ("status-code.json", mutated(_set("/dossier/status/code", "lost"), message_type="status_update")),
    ("fine-no-amount.json", mutated(_set("/dossier/sanction/amount_chf", None), message_type="sanction_decision")),
    (
        "fine-too-high.json",
        mutated(_set("/dossier/sanction/amount_chf", Decimal("30000.01")), message_type="sanction_decision"),
    ),
    ("ban-no-years.json", mutated(_set("/dossier/sanction/kind", "service_ban"), message_type="sanction_decision")),
    ("penalty-no-amount.json", mutated(_set("/dossier/decision/amount_chf", None), message_type="violation_report")),
    ("violation-no-findings.json", mutated(_set("/dossier/findings", []), message_type="violation_report")),
    ("mandate-no-control.json", mutated(_set("/dossier/control", None), message_type="control_mandate")),
]

# The samples' control period ends 30 days before today (Swiss time): a start 10 days ago comes after its end.
# (A fixed "2026-10-31" did until the period's end reached it, on 2026-11-30.)
_TEN_DAYS_AGO = (datetime.now(SWISS_TIME).date() - timedelta(days=10)).isoformat()

RULES: list[tuple[str, bytes, str]] = [
    ("uid-checksum.json", _schema("/dossier/employer/uid", "CHE-116.281.711"), "UID_CHECKSUM"),
    ("ahv-checksum.json", _schema("/dossier/workers/0/ahv_number", "756.1234.5678.90"), "AHV_CHECKSUM"),
    ("period-order.json", _schema("/dossier/control/period/from", _TEN_DAYS_AGO), "DATE_ORDER"),
    ("period-after-control.json", _schema("/dossier/control/period/to", "2099-12-31"), "DATE_ORDER"),
    ("control-future.json", _schema("/dossier/control/date", "2099-01-01"), "DATE_IN_FUTURE"),
    ("created-future.json", _schema("/envelope/created_at", "2099-01-01T00:00:00+01:00"), "DATE_IN_FUTURE"),
    (
        "decided-future.json",
        mutated(_set("/dossier/sanction/decided_on", "2099-01-01"), message_type="sanction_decision"),
        "DATE_IN_FUTURE",
    ),
    ("wage-decimals.json", _schema("/dossier/workers/0/gross_hourly_wage_chf", Decimal("31.505")), "AMOUNT_DECIMALS"),
    ("country-unknown.json", _schema("/dossier/employer/address/country", "XX"), "COUNTRY_CODE"),
    ("nationality-unknown.json", _schema("/dossier/workers/0/nationality", "ZZ"), "COUNTRY_CODE"),
    ("finding-decimals.json", _schema("/dossier/findings/0/amount_chf", Decimal("19.999")), "AMOUNT_DECIMALS"),
]

ATTACHMENTS: list[tuple[str, bytes, str]] = [
    ("att-sha.json", _schema("/dossier/attachments/0/sha256", "0" * 64), "ATTACHMENT_SHA256"),
    ("att-size.json", _schema("/dossier/attachments/0/size", 1), "ATTACHMENT_SIZE"),
    ("att-base64.json", _schema("/dossier/attachments/0/content_base64", "not base64!!"), "ATTACHMENT_BASE64"),
    ("att-missing-content.json", _schema("/dossier/attachments/0/content_base64", _DELETE), "ATTACHMENT_MISSING"),
    (
        "att-duplicate.json",
        mutated(lambda d: d["dossier"]["attachments"].append(d["dossier"]["attachments"][0])),
        "ATTACHMENT_DUPLICATE",
    ),
    (
        "fake-pdf.json",
        samples.dossier_bytes(
            samples.make_dossier(SENDER, RECIPIENT, attachments=[("fake.pdf", b"MZ\x90\x00 this is an exe")])
        ),
        "ATTACHMENT_NOT_PDF",
    ),
    ("pkg-missing.zip", zipped([], dossier=package_doc()), "ATTACHMENT_MISSING"),
    ("pkg-extra.zip", zipped([("a.pdf", PDF), ("b.pdf", PDF)], dossier=package_doc()), "ATTACHMENT_EXTRA"),
    (
        "pkg-nested-zip.zip",
        zipped([("a.pdf", PDF), ("inner.zip", zipped([("x", b"x")]))], dossier=package_doc()),
        "ATTACHMENT_EXTRA",
    ),
    (
        "pkg-wrong-bytes.zip",
        zipped([("a.pdf", samples.make_pdf(3_000, seed=1))], dossier=package_doc()),
        "ATTACHMENT_SHA256",
    ),
]

ROUTING: list[tuple[str, bytes, int, str]] = [
    ("sender-claim.json", _schema("/envelope/sender_id", RECIPIENT), 300, "SENDER_MISMATCH"),
    ("recipient-unknown.json", _schema("/envelope/recipient_id", "nobody-here"), 301, "RECIPIENT_UNKNOWN"),
    ("recipient-disabled.json", _schema("/envelope/recipient_id", DISABLED), 301, "RECIPIENT_INACTIVE"),
    ("route.json", _schema("/envelope/recipient_id", OTHER), 310, "ROUTE_FORBIDDEN"),
    ("to-self.json", _schema("/envelope/recipient_id", SENDER), 310, "ROUTE_FORBIDDEN"),
]

CASES: list[Case] = (
    [Case(n, d, 330 if c == "TOO_LARGE" else 200, c) for n, d, c in UNREADABLE]
    + [Case(n, d, 210, "DOSSIER_SCHEMA") for n, d in SCHEMA]
    + [Case(n, d, 211, c) for n, d, c in RULES]
    + [Case(n, d, 202, c) for n, d, c in ATTACHMENTS]
    + [Case(n, d, s, c) for n, d, s, c in ROUTING]
)

# NFC and NFD spellings of one name are two different files: each gets its own receipt.
TWINS = [
    Case(name, _schema("/dossier/employer/uid", "CHE-116.281.711"), 211, "UID_CHECKSUM")
    for name in ("Zu\u0308rich.json", "Z\u00fcrich.json")
]
