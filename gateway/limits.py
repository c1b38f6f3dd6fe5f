"""Size and shape limits on what an organ may drop (configurable; see config/gateway.example.toml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Bounds applied while reading a dropped file, before any of it is trusted."""

    max_message_bytes: int = 4 * 1024**3  # whole file as dropped (code 330 above it)
    max_json_bytes: int = 64 * 1024**2  # a .json dossier, or dossier.json inside a package
    max_json_depth: int = 64  # nesting of arrays/objects
    max_number_digits: int = 30  # digits in one JSON number
    max_zip_entries: int = 1000  # entries in a package
    max_zip_ratio: int = 200  # uncompressed / compressed size of one entry
    max_zip_expanded_bytes: int = 8 * 1024**3  # sum of uncompressed sizes in a package
    max_future_skew_seconds: int = 300  # created_at may be at most this far in the future
