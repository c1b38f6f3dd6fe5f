"""Frozen settings: embedded defaults < TOML file < ``FLAM_GATEWAY_*`` environment variables.

Every key is documented in ``config/gateway.example.toml``. The environment variable of a key is
``FLAM_GATEWAY_`` + the key in upper case (``FLAM_GATEWAY_WORKERS=4``).
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from gateway.errors import AdminError
from gateway.limits import Limits

OPENPGP_ENGINES = ("sequoia", "gpg")
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}
_LISTEN = re.compile(r"(\[[0-9A-Fa-f:.%]+\]|[^:\[\]]*):(?P<port>[0-9]{1,5})")
# numbers that must be above zero (0 would stop the gateway's work or spin it); every other may be 0
_ABOVE_ZERO = {
    "rescan_seconds",
    "expire_after_days",
    "partial_upload_days",
    "gpg_timeout_seconds",
    "retry_max_seconds",
    "login_timeout_seconds",
    "idle_timeout_seconds",
    "max_sessions_total",
    "max_startups_per_address",
    "max_startups",
    "max_auth_tries",
    "max_message_bytes",
    "max_json_bytes",
    "max_zip_entries",
    "max_zip_ratio",
    "max_zip_expanded_bytes",
}


@dataclass(frozen=True)
class Settings:
    """Everything the gateway can be told. ``data_dir`` holds organs, spool, quarantine, keys and the ledger."""

    data_dir: Path = Path("gateway-data")
    database_url: str = ""  # empty: SQLite file ledger.sqlite3 in the data dir
    workers: int = 8  # worker loops per node, spread as threads over one process per core; 0: deliveries paused
    settle_seconds: float = 0.5  # a closed file must stay unchanged this long before intake
    rescan_seconds: float = 30.0  # periodic full scan (inotify can drop events)
    unknown_suffix_grace_seconds: float = 600.0  # unknown suffixes are rejected (200) after this
    hold_days: float = 3.0  # a dossier whose recipient has no usable key waits this long, then 311
    expire_after_days: float = 30.0  # a delivery not picked up is removed and the sender gets 204
    warn_before_expiry_days: float = 5.0  # 701 this long before expiry
    quarantine_days: float = 90.0  # rejected originals are destroyed after this
    partial_upload_days: float = 7.0  # an outbox file under a temporary name (x.filepart) unchanged this long: removed
    retention_days: float = 365.0  # ledger and audit rows are purged after this (EntsV Art. 13a)
    gpg_timeout_seconds: float = 600.0
    openpgp: str = "sequoia"  # who signs and encrypts: "sequoia" (in-process) or "gpg" (a gpg process per file)
    retry_max_seconds: float = 300.0  # longest wait between retries after a gateway fault (disk full, gpg, database)
    listen: str = "127.0.0.1:2222"  # SFTP door; empty string: no SFTP door
    metrics_listen: str = ""  # Prometheus metrics over HTTP (HOST:PORT); empty string: none
    metrics_tls_cert: str = ""  # PEM certificate (chain): the metrics endpoint speaks HTTPS
    metrics_tls_key: str = ""  # ... and its private key (PEM, unencrypted)
    metrics_client_ca: str = ""  # PEM CA certificate(s): a scrape must show a client certificate one of them issued
    login_timeout_seconds: float = 30.0
    idle_timeout_seconds: float = 600.0
    max_sessions_per_organ: int = 20
    max_sessions_total: int = 500
    max_startups_per_address: int = 200  # SFTP connections not yet logged in, from one address
    max_startups: int = 1000  # ... from all addresses together
    max_auth_tries: int = 6  # keys one SFTP connection may offer that are refused; then it is closed
    ssh_allow_sha1: bool = False  # SFTP door: also SHA-1 (ssh-rsa signatures, group14-sha1) for old clients
    upload_quota_bytes: int = 16 << 30  # what one organ may have waiting at the gateway (outbox, spool); 0: no quota
    max_message_bytes: int = Limits.max_message_bytes
    max_json_bytes: int = Limits.max_json_bytes
    max_zip_entries: int = Limits.max_zip_entries
    max_zip_ratio: int = Limits.max_zip_ratio
    max_zip_expanded_bytes: int = Limits.max_zip_expanded_bytes

    def __post_init__(self) -> None:
        if self.openpgp not in OPENPGP_ENGINES:
            raise AdminError("CONFIG_INVALID", f"setting 'openpgp': {self.openpgp!r} is not one of {OPENPGP_ENGINES}")
        for name, example, off in (("listen", "2222", "no SFTP door"), ("metrics_listen", "9464", "no metrics")):
            value = getattr(self, name)
            if value and not ((found := _LISTEN.fullmatch(value)) and int(found["port"]) <= 65535):
                raise AdminError(
                    "CONFIG_INVALID",
                    f"setting {name!r}: {value!r} is not HOST:PORT (127.0.0.1:{example}, [::1]:{example}, "
                    f":{example} for every address, '' for {off})",
                )
        if bool(self.metrics_tls_cert) != bool(self.metrics_tls_key):
            raise AdminError("CONFIG_INVALID", "settings 'metrics_tls_cert' and 'metrics_tls_key' go together")
        if self.metrics_client_ca and not self.metrics_tls_cert:
            raise AdminError(
                "CONFIG_INVALID",
                "setting 'metrics_client_ca' needs 'metrics_tls_cert' and 'metrics_tls_key' (client certificates are "
                "asked for over TLS)",
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            positive = f.name in _ABOVE_ZERO
            if not math.isfinite(value) or value < 0 or (positive and value == 0):
                bound = "it must be greater than 0" if positive else "it must be 0 or more"
                raise AdminError("CONFIG_INVALID", f"setting {f.name!r}: {value!r} is out of range ({bound})")

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name != "database_url")
        return f"Settings(database_url={without_password(self.database_url)!r}, {shown})"

    @property
    def limits(self) -> Limits:
        return Limits(
            max_message_bytes=self.max_message_bytes,
            max_json_bytes=self.max_json_bytes,
            max_zip_entries=self.max_zip_entries,
            max_zip_ratio=self.max_zip_ratio,
            max_zip_expanded_bytes=self.max_zip_expanded_bytes,
        )

    @property
    def room_needed(self) -> int:
        """Free bytes the data dir's filesystem should keep: the largest dossier the gateway takes and its encrypted
        copy, which wait side by side in the spool."""
        return 2 * self.max_message_bytes

    @property
    def ledger_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'ledger.sqlite3').resolve()}"


def host_port(listen: str) -> tuple[str, int]:
    """The host and port of a checked ``HOST:PORT`` setting; no host is every address."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def without_password(url: str) -> str:
    """A database URL as messages and logs may show it: its password as ``***``."""
    from sqlalchemy.engine import make_url  # here: the settings are read by commands that never open the ledger
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True) if url else url
    except ArgumentError:
        return "(a database_url that is not a URL)"


def _coerce(name: str, value: Any) -> Any:
    """Convert a TOML or environment value to the type of the field ``name``."""
    default = getattr(Settings(), name)
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            if (word := str(value).strip().lower()) in _TRUE | _FALSE:
                return word in _TRUE
            raise ValueError(f"not one of {', '.join(sorted(_TRUE | _FALSE))}")
        if isinstance(default, Path):
            return Path(value)
        return type(default)(value)
    except (TypeError, ValueError) as exc:
        raise AdminError("CONFIG_INVALID", f"setting {name!r}: cannot use {value!r} ({exc})") from exc


def load_settings(
    config_file: Path | None = None, data_dir: Path | None = None, env: dict[str, str] | None = None
) -> Settings:
    """Build the settings: defaults, then the TOML file, then FLAM_GATEWAY_* env, then an explicit data dir."""
    return _settings(_given(config_file, data_dir, env))


def explain_settings(
    config_file: Path | None = None, data_dir: Path | None = None, env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Every setting with the value the gateway runs with and where it comes from: ``default``, the config file,
    the environment variable or ``--data-dir`` (the database URL without its password)."""
    given = _given(config_file, data_dir, env)
    settings = _settings(given)
    rows = []
    for f in fields(Settings):
        value = getattr(settings, f.name)
        shown = (
            without_password(value) if f.name == "database_url" else str(value) if isinstance(value, Path) else value
        )
        rows.append({"setting": f.name, "value": shown, "from": given[f.name][1] if f.name in given else "default"})
    return rows


def _settings(given: dict[str, tuple[Any, str]]) -> Settings:
    return replace(Settings(), **{name: value for name, (value, _) in given.items()})


def _given(config_file: Path | None, data_dir: Path | None, env: dict[str, str] | None) -> dict[str, tuple[Any, str]]:
    """Each setting given above its default: its value and where it was given (the last of the layers wins)."""
    env = dict(os.environ if env is None else env)
    known = {f.name for f in fields(Settings)}
    values: dict[str, tuple[Any, str]] = {}
    if config_file is not None:
        try:
            raw = tomllib.loads(Path(config_file).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise AdminError("CONFIG_INVALID", f"cannot read config file {config_file}: {exc}") from exc
        flat = {k: v for section in raw.values() if isinstance(section, dict) for k, v in section.items()}
        flat.update({k: v for k, v in raw.items() if not isinstance(v, dict)})
        unknown = sorted(set(flat) - known)
        if unknown:
            raise AdminError("CONFIG_INVALID", f"unknown setting(s) in {config_file}: {', '.join(unknown)}")
        values.update({k: (_coerce(k, v), str(config_file)) for k, v in flat.items()})
    if "FLAM_GATEWAY_HOME" in env:
        values["data_dir"] = (Path(env["FLAM_GATEWAY_HOME"]), "FLAM_GATEWAY_HOME")
    for name in known:
        key = f"FLAM_GATEWAY_{name.upper()}"
        if key in env:
            values[name] = (_coerce(name, env[key]), key)
    if data_dir is not None:
        values["data_dir"] = (Path(data_dir), "--data-dir")
    return values
