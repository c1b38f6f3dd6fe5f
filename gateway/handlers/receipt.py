"""Receipts: the JSON a sender finds in its ``receipts/`` folder for every outcome."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from gateway.folders import safe_component

STATUS_INFO: dict[int, str] = {
    100: "delivered to the recipient's inbox",
    110: "picked up by the recipient",
    204: "expired: not picked up in time, removed from the recipient's inbox",
    500: "gateway fault: nothing is lost, the gateway retries and the admin is alerted",
    601: "held: the recipient cannot receive yet, delivery pending",
    701: "will expire soon: not yet picked up by the recipient",
}


def receipt_name(transfer_id: str, message_id: str | None, file_name: str, status_code: int) -> str:
    """``<message_id or file name>_<status>_<transfer id>.receipt.json``: unique and stable for a redo."""
    return f"{safe_component(message_id or file_name)}_{status_code}_{transfer_id}.receipt.json"


def receipt_document(
    *,
    message_id: str | None,
    dossier_id: str | None,
    sender_id: str,
    recipient_id: str | None,
    status_code: int,
    status_info: str,
    event_time: datetime,
    file_name: str,
    errors: list[dict[str, Any]],
) -> dict[str, Any]:
    """The receipt as in DOSSIER-SPEC (schemas/receipt.schema.json)."""
    return {
        "receipt_version": "1.0",
        "message_id": message_id,
        "dossier_id": dossier_id,
        "sender_id": sender_id,
        "recipient_id": recipient_id,
        "status_code": status_code,
        "status_info": status_info,
        "event_time": event_time.isoformat(timespec="seconds"),
        "file": file_name,
        "errors": errors,
    }


def receipt_bytes(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
