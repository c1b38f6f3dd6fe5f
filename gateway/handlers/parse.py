"""Read a dropped file into a document without trusting it: JSON dossiers and zip packages.

Every limit is checked before the bytes are believed: size, encoding, number sizes, nesting depth,
duplicate keys, NaN/Infinity; in packages entry names, links, folders, encryption, entry count and
expansion. Package attachments are streamed (hashed, never held in memory).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import zipfile
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from gateway.errors import Problem, Rejected
from gateway.limits import Limits

PACKAGE_DOSSIER = "dossier.json"
_SAFE_ENTRY = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')  # strings (skipped whole) and brackets
_BOMB_MIN_BYTES = 1 << 20  # below this size an entry's compression ratio is not judged


@dataclass(frozen=True)
class FileFacts:
    """What the gateway learnt about one package entry while streaming it."""

    size: int
    sha256: str
    is_pdf: bool


@dataclass(frozen=True)
class Parsed:
    """A readable dossier: its form, its JSON document (numbers with a fraction as Decimal) and package entries."""

    form: str  # "json" | "zip"
    document: dict[str, Any]
    files: dict[str, FileFacts] = field(default_factory=dict)


_BIDI_AND_INVISIBLE = {
    "\u200e",
    "\u200f",
    "\u202a",
    "\u202b",
    "\u202c",
    "\u202d",
    "\u202e",
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",
    "\ufeff",
}
MAX_NAME_BYTES = 200


def _unprintable(c: str) -> bool:
    """A control character (C0, DEL, C1) or one that turns or hides text (direction marks, zero-width)."""
    return ord(c) < 32 or 127 <= ord(c) < 160 or c in _BIDI_AND_INVISIBLE


def shown(text: str) -> str:
    """``text`` with its control, direction and invisible characters written as escapes (``\\x1b``,
    ``\\u202e``): what a terminal may print without being steered (colours, titles, text turned around)."""
    return "".join(ascii(c)[1:-1] if _unprintable(c) else c for c in text)


def name_problems(name: str) -> list[Problem]:
    """File names must be UTF-8, printable, without direction marks, and at most 200 bytes (receipts name them)."""
    if any(_unprintable(c) for c in name):
        return [Problem("FILE_NAME", "", "the file name contains control or text-direction characters")]
    if "\ufffd" in name:  # where intake found bytes that are not UTF-8 (folders.text_name)
        return [Problem("FILE_NAME", "", "the file name is not UTF-8 (shown with \ufffd for the bytes that are not)")]
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return [Problem("FILE_NAME", "", f"the file name is longer than {MAX_NAME_BYTES} bytes")]
    return []


def _reject(code: str, message: str, path: str = "") -> Rejected:
    return Rejected([Problem(code, path, message)])


def read_dossier(path: Path, limits: Limits) -> Parsed:
    """Parse ``path`` as a ``.json`` dossier or a ``.zip`` package; raise Rejected with the reason otherwise."""
    suffix = path.suffix.lower()
    if suffix not in (".json", ".zip"):
        raise _reject("FILE_SUFFIX", "only .json dossiers and .zip packages are accepted")
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        raise _reject("FILE_NOT_REGULAR", "only regular files are accepted (no folders, links or pipes)")
    if info.st_size == 0:
        raise _reject("FILE_EMPTY", "the file is empty")
    if info.st_size > limits.max_message_bytes:
        raise _reject("TOO_LARGE", f"the file is larger than the limit of {limits.max_message_bytes} bytes")
    if suffix == ".json":
        if info.st_size > limits.max_json_bytes:
            raise _reject("TOO_LARGE", f"a .json dossier may have at most {limits.max_json_bytes} bytes")
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            return Parsed("json", parse_json(fh.read(limits.max_json_bytes + 1), limits))
    return _read_package(path, limits)


def parse_json(raw: bytes, limits: Limits, where: str = "") -> dict[str, Any]:
    """Decode UTF-8 JSON (a UTF-8 BOM is tolerated) under the limits; the top level must be an object."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _reject("FILE_NOT_UTF8", f"{where}the text is UTF-16; dossiers must be UTF-8", "")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _reject("FILE_NOT_UTF8", f"{where}the text is not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise _reject("FILE_EMPTY", f"{where}the file holds no JSON")
    _check_depth(text, limits.max_json_depth, where)
    try:
        document = json.loads(
            text,
            parse_float=_decimal(limits),
            parse_int=_integer(limits),
            parse_constant=_no_constant,
            object_pairs_hook=_unique_keys,
        )
    except Rejected:
        raise
    except RecursionError:
        raise _reject("JSON_TOO_DEEP", f"{where}the JSON is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise _reject(
            "FILE_NOT_JSON", f"{where}not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(document, dict):
        raise _reject("JSON_NOT_OBJECT", f"{where}the top level must be a JSON object")
    return document


def _check_depth(text: str, limit: int, where: str) -> None:
    """Reject nesting deeper than ``limit`` before json recurses into it (brackets in strings are skipped)."""
    if text.count("[") + text.count("{") <= limit:
        return  # cannot nest deeper than it has openings (the common case: no scan through the attachments)
    depth = 0
    for token in _TOKENS.finditer(text):
        char = token.group()
        if char in "[{":
            depth += 1
            if depth > limit:
                raise _reject("JSON_TOO_DEEP", f"{where}the JSON is nested deeper than {limit} levels")
        elif char in "]}":
            depth -= 1


def _decimal(limits: Limits):  # type: ignore[no-untyped-def]
    def parse(text: str) -> Decimal:
        if len(text) > limits.max_number_digits + 8:
            raise _reject("JSON_NUMBER", f"a number has more than {limits.max_number_digits} digits")
        value = Decimal(text)
        if abs(value.adjusted()) > limits.max_number_digits:
            raise _reject("JSON_NUMBER", "a number is out of range")
        return value

    return parse


def _integer(limits: Limits):  # type: ignore[no-untyped-def]
    def parse(text: str) -> int:
        if len(text.lstrip("-")) > limits.max_number_digits:
            raise _reject("JSON_NUMBER", f"a number has more than {limits.max_number_digits} digits")
        return int(text)

    return parse


def _no_constant(name: str) -> Any:
    raise _reject("JSON_NUMBER", f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise _reject("JSON_DUPLICATE_KEY", "an object has the same key twice")
        document[key] = value
    return document


def _read_package(path: Path, limits: Limits) -> Parsed:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise _reject("ZIP_INVALID", "not a readable zip package") from None
    with archive:
        entries = archive.infolist()
        _check_entries(entries, limits)
        names = [e.filename for e in entries]
        if PACKAGE_DOSSIER not in names:
            raise _reject("ZIP_NO_DOSSIER", f"the package has no {PACKAGE_DOSSIER} at its root")
        files: dict[str, FileFacts] = {}
        document: dict[str, Any] = {}
        for index, entry in enumerate(entries):
            try:
                if entry.filename == PACKAGE_DOSSIER:
                    if entry.file_size > limits.max_json_bytes:
                        raise _reject("TOO_LARGE", f"{PACKAGE_DOSSIER} may have at most {limits.max_json_bytes} bytes")
                    with archive.open(entry) as fh:
                        raw = fh.read(limits.max_json_bytes + 1)
                    document = parse_json(raw, limits, f"{PACKAGE_DOSSIER}: ")
                else:
                    files[entry.filename] = _stream_facts(archive, entry, index, limits)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError, RuntimeError):
                raise _reject("ZIP_INVALID", "a package entry cannot be read", f"/package/{index}") from None
    return Parsed("zip", document, files)


def _check_entries(entries: list[zipfile.ZipInfo], limits: Limits) -> None:
    if len(entries) > limits.max_zip_entries:
        raise _reject("ZIP_BOMB", f"the package has more than {limits.max_zip_entries} entries")
    if sum(e.file_size for e in entries) > limits.max_zip_expanded_bytes:
        raise _reject("ZIP_BOMB", f"the package expands beyond {limits.max_zip_expanded_bytes} bytes")
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"/package/{index}"
        mode = entry.external_attr >> 16
        if entry.flag_bits & 0x1:
            problems.append(Problem("ZIP_ENCRYPTED", where, "encrypted package entries are not accepted"))
        elif entry.is_dir() or stat.S_ISDIR(mode):
            problems.append(Problem("ZIP_UNSAFE_ENTRY", where, "folders are not allowed in a package"))
        elif stat.S_ISLNK(mode):
            problems.append(Problem("ZIP_UNSAFE_ENTRY", where, "links are not allowed in a package"))
        elif not _SAFE_ENTRY.fullmatch(entry.filename) or entry.filename in {".", ".."}:
            problems.append(
                Problem(
                    "ZIP_UNSAFE_ENTRY",
                    where,
                    "entry names must be plain file names at the root (letters, digits, '.', '_', '-'; no paths)",
                )
            )
        elif entry.filename in seen:
            problems.append(Problem("ZIP_UNSAFE_ENTRY", where, "the package names the same entry twice"))
        elif entry.file_size > _BOMB_MIN_BYTES and entry.file_size > limits.max_zip_ratio * max(entry.compress_size, 1):
            problems.append(Problem("ZIP_BOMB", where, f"the entry expands more than {limits.max_zip_ratio}-fold"))
        seen.add(entry.filename)
    if problems:
        raise Rejected(problems)


def _stream_facts(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, index: int, limits: Limits) -> FileFacts:
    digest, size, head = hashlib.sha256(), 0, b""
    with archive.open(entry) as fh:
        while chunk := fh.read(1 << 20):
            if not head:
                head = chunk[:5]
            size += len(chunk)
            if size > entry.file_size:
                raise _reject("ZIP_BOMB", "the entry is larger than the package declares", f"/package/{index}")
            digest.update(chunk)
    return FileFacts(size, digest.hexdigest(), head == b"%PDF-")
