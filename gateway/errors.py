"""Typed errors with stable codes.

Two families matter to the pipeline:

* :class:`Rejected` - the sender's fault. The dossier ends REJECTED and the sender gets a receipt
  listing every :class:`Problem` (code, JSON path, human message; never the offending value).
* :class:`GatewayFault` - the gateway's fault (disk, gpg, database). Nothing is lost: the dossier
  stays where it is and is retried; the admin is alerted.

One problem is the gateway's fault and still ends the dossier: ``SPOOL_DAMAGED`` (500), its spooled copy
changed after intake, so there is nothing left to retry with; the sender is asked to send it again.

:class:`Held` sits between them: the dossier is fine but the recipient cannot receive it yet.
:class:`AdminError` is for CLI misuse (unknown organ, unusable key file, ...).

Codes are translated to receipt status codes here, once (:func:`status_for`), and to SFTP status
codes in the SFTP door.
"""

from __future__ import annotations

from dataclasses import dataclass

# Problem code -> sedex-style receipt status code. The codes are a contract with vendors.
STATUS_OF: dict[str, int] = {
    # 200: unreadable
    "FILE_EMPTY": 200,
    "FILE_NOT_UTF8": 200,
    "FILE_NOT_JSON": 200,
    "FILE_SUFFIX": 200,
    "FILE_NAME": 200,
    "FILE_NOT_REGULAR": 200,
    "JSON_NOT_OBJECT": 200,
    "JSON_TOO_DEEP": 200,
    "JSON_DUPLICATE_KEY": 200,
    "JSON_NUMBER": 200,
    "ZIP_INVALID": 200,
    "ZIP_UNSAFE_ENTRY": 200,
    "ZIP_ENCRYPTED": 200,
    "ZIP_BOMB": 200,
    "ZIP_NO_DOSSIER": 200,
    # 201: duplicate message id
    "DUPLICATE_MESSAGE_ID": 201,
    # 202: attachment missing or not matching
    "ATTACHMENT_MISSING": 202,
    "ATTACHMENT_EXTRA": 202,
    "ATTACHMENT_SIZE": 202,
    "ATTACHMENT_SHA256": 202,
    "ATTACHMENT_NOT_PDF": 202,
    "ATTACHMENT_BASE64": 202,
    "ATTACHMENT_DUPLICATE": 202,
    # 210: schema violation
    "DOSSIER_SCHEMA": 210,
    # 211: business rules
    "UID_CHECKSUM": 211,
    "AHV_CHECKSUM": 211,
    "DATE_ORDER": 211,
    "DATE_IN_FUTURE": 211,
    "AMOUNT_DECIMALS": 211,
    "COUNTRY_CODE": 211,
    "RULE_VIOLATION": 211,
    # 204 / 701: expiry
    "EXPIRED": 204,
    "EXPIRY_WARNING": 701,
    # 300..330: routing
    "SENDER_MISMATCH": 300,
    "RECIPIENT_UNKNOWN": 301,
    "RECIPIENT_INACTIVE": 301,
    "ROUTE_FORBIDDEN": 310,
    "RECIPIENT_NO_KEY": 311,
    "RECIPIENT_KEY_CHANGED": 311,
    "KEY_EXPIRED": 311,
    "KEY_REVOKED": 311,
    "KEY_CANNOT_ENCRYPT": 311,
    "TOO_LARGE": 330,
    # 500: gateway fault
    "GATEWAY_FAULT": 500,
    "SPOOL_DAMAGED": 500,
}

# When one rejection carries problems of several kinds, the receipt's status code is the one that
# comes first here: the most fundamental reason a vendor should fix first.
STATUS_PRIORITY: tuple[int, ...] = (330, 200, 300, 210, 211, 202, 201, 301, 310, 311, 204, 500)


@dataclass(frozen=True)
class Problem:
    """One reason a dossier cannot be delivered: a stable code, a JSON pointer and a message.

    The message names the rule, never the value found (receipts carry no personal data).
    """

    code: str
    path: str
    message: str

    def __post_init__(self) -> None:
        if self.code not in STATUS_OF:
            raise ValueError(f"unknown problem code {self.code!r}")

    @property
    def status(self) -> int:
        return STATUS_OF[self.code]

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "path": self.path, "message": self.message}


def status_for(problems: list[Problem] | tuple[Problem, ...]) -> int:
    """The receipt status code for a list of problems (see STATUS_PRIORITY)."""
    found = {p.status for p in problems}
    for status in STATUS_PRIORITY:
        if status in found:
            return status
    raise ValueError("status_for needs at least one problem")


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose: a stable code and a human message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Rejected(GatewayError):
    """The sender's fault: the dossier is rejected with every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        if not problems:
            raise ValueError("Rejected needs at least one problem")
        self.problems = list(problems)
        self.status = status_for(self.problems)
        first = self.problems[0]
        super().__init__(first.code, "; ".join(f"{p.code} at {p.path or '/'}: {p.message}" for p in self.problems))


class Held(GatewayError):
    """The dossier is valid but the recipient cannot receive it now (e.g. no usable PGP key)."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.code, problem.message)
        self.problem = problem


class GatewayFault(GatewayError):
    """The gateway's fault (disk, gpg, database): nothing is lost, the step is retried."""

    def __init__(self, message: str, code: str = "GATEWAY_FAULT") -> None:
        super().__init__(code, message)


class AdminError(GatewayError):
    """An admin request that cannot be carried out (unknown organ, unusable key file, ...)."""


class IllegalTransition(GatewayError):
    """A lifecycle transition that is not in the table."""

    def __init__(self, source: str, target: str) -> None:
        super().__init__("ILLEGAL_TRANSITION", f"no transition {source} -> {target} in the lifecycle table")
