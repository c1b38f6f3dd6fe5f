"""Files shipped with the package: the JSON Schemas of the exchange format."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

_SOURCE_TREE_SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Load ``schemas/<name>`` (e.g. ``dossier.schema.json``) from the installed package or the source tree."""
    try:
        text = resources.files("gateway.schemas").joinpath(name).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        text = (_SOURCE_TREE_SCHEMAS / name).read_text(encoding="utf-8")
    return json.loads(text)
