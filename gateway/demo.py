"""`flam-gateway demo`: the whole story in a temporary folder, on a free local port, then a clean exit."""

from __future__ import annotations

import json
import time

import paramiko
from rich.console import Console
from rich.table import Table

from gateway import samples
from gateway.harness import Sandbox

KV, PK, CANTON = "kv-bau-zh", "pk-bau-zh", "canton-zh"


def _sftp(box: Sandbox, organ: str) -> tuple[paramiko.Transport, paramiko.SFTPClient]:
    transport = paramiko.Transport(("127.0.0.1", box.port or 0))
    transport.connect(username=organ, pkey=paramiko.Ed25519Key.from_private_key_file(str(box.organs[organ].ssh_key)))
    return transport, paramiko.SFTPClient.from_transport(transport)  # type: ignore[return-value]


def _upload(box: Sandbox, organ: str, name: str, data: bytes) -> None:
    transport, sftp = _sftp(box, organ)
    with sftp.open(f"/outbox/{name}", "wb") as fh:
        fh.write(data)
    transport.close()


def _settle(box: Sandbox, count: int) -> None:
    box.wait_settled(count, timeout=120)


def run_demo(console: Console) -> None:
    """Three organs, four dossiers over SFTP, one rejected; the recipients fetch and decrypt theirs."""
    box = Sandbox(settings={"settle_seconds": 0.2, "rescan_seconds": 2})
    try:
        console.rule("[bold]flam-gateway demo")
        console.print(f"data dir {box.data_dir}")
        box.cli("init")
        for organ, kind in ((KV, "control_body"), (PK, "joint_committee"), (CANTON, "canton")):
            box.add_organ(organ, kind)
            console.print(f"organ [cyan]{organ}[/] ({kind}) with fresh SSH and OpenPGP keys")
        box.allow(KV, PK)
        box.allow(PK, CANTON)
        console.print(f"routes {KV} → {PK} → {CANTON}")
        port = box.start()
        console.print(f"gateway serving SFTP on 127.0.0.1:{port}\n")

        report = samples.make_dossier(KV, PK, attachments=[("kontrollbericht.pdf", samples.make_pdf(48_213))])
        _upload(box, KV, "report-417.json", samples.dossier_bytes(report))
        console.print(f"{KV} uploads report-417.json (control report with a PDF) over SFTP")
        wrong = samples.make_dossier(KV, CANTON)
        wrong["dossier"]["employer"]["uid"] = "CHE-116.281.711"
        _upload(box, KV, "report-418.json", samples.dossier_bytes(wrong))
        console.print(f"{KV} uploads report-418.json: wrong UID check digit, and no route to {CANTON}")
        violation = samples.make_dossier(PK, CANTON, message_type="violation_report", dossier_id="ZH-2026-00417")
        _upload(box, PK, "violation-417.json", samples.dossier_bytes(violation))
        console.print(f"{PK} uploads violation-417.json to {CANTON}")
        _settle(box, 3)

        for organ in (PK, CANTON):
            transport, sftp = _sftp(box, organ)
            for name in sftp.listdir("/inbox"):
                local = box.root / name
                sftp.get(f"/inbox/{name}", str(local))
                plain = box.decrypt(organ, local)
                doc = json.loads(plain.data or b"{}")
                console.print(
                    f"{organ} downloads {name}, decrypts {len(plain.data or b'')} bytes "
                    f"({doc['envelope']['message_type']}), gateway signature "
                    f"{'[green]valid' if plain.signature_valid else '[red]INVALID'}[/]"
                )
                sftp.remove(f"/inbox/{name}")
            transport.close()
        box.wait_for(lambda: sum(t.state == "fetched" for t in box.transfers()) == 2, 30, "pick-ups")
        time.sleep(0.5)

        console.print()
        for organ in (KV, PK):
            for receipt in box.receipts(organ):
                errors = ", ".join(f"{e['code']} at {e['path']}" for e in receipt["errors"])
                console.print(
                    f"receipt for {organ}: [bold]{receipt['status_code']}[/] {receipt['file']}: "
                    f"{receipt['status_info']}" + (f" [red]({errors})[/]" if errors else "")
                )
        table = Table(title="transfers")
        for col in ("file", "sender", "recipient", "state", "status"):
            table.add_column(col)
        for t in box.transfers():
            table.add_row(t.file_name, t.sender_id, t.recipient_id or "", t.state, str(t.status_code))
        console.print(table)
        box.stop()
        console.print("[green]demo finished cleanly[/]")
    finally:
        box.close()
