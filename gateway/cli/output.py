"""What every command shares: the gateway of the invocation, and printing tables, JSON and errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from gateway.errors import GatewayError
from gateway.handlers.parse import shown
from gateway.service import Gateway

# no console markup: what is printed holds senders' file names and admins' input, and "[/x]" in a name would
# otherwise be eaten as a style or end the command with rich's MarkupError; values from the ledger also pass
# through `shown`, since control characters in a name would steer the admin's terminal
out = Console(soft_wrap=True, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)


def gateway_of(ctx: click.Context, *, made: bool = True) -> Gateway:
    """The gateway the root command made for this invocation; unless ``made`` is false (the commands that make
    the data dir or need none), one whose data dir `init` has made (:meth:`Gateway.made`)."""
    gateway: Gateway = ctx.find_object(Gateway)  # type: ignore[assignment]
    return gateway.made() if made else gateway


def known_organ(ctx: click.Context, organ_id: str | None) -> Gateway:
    """The gateway, once ``organ_id`` (a filter) is known: a misspelt organ is an error, not an empty list."""
    gw = gateway_of(ctx)
    if organ_id is not None:
        gw.ledger.organ(organ_id)
    return gw


@contextmanager
def progress(what: str) -> Iterator[Callable[[int, int], None]]:
    """A bar on stderr for a long admin operation, called with (done, total); shown only on a terminal (a log, a
    pipe or cron gets nothing), and gone once the operation ends."""
    columns = (TextColumn(what, markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def print_rows(rows: Sequence[dict[str, Any]], columns: Iterable[str], as_json: bool, title: str) -> None:
    if as_json:
        click.echo(json.dumps(list(rows), ensure_ascii=False, indent=2, default=str))
        return
    table = Table(title=title)
    cols = list(columns)
    for col in cols:
        table.add_column(col, overflow="fold")  # never cut a value short: ids are copied from these tables
    for row in rows:
        table.add_row(*["" if row.get(c) is None else shown(str(row.get(c))) for c in cols])
    out.print(table)


def error(exc: GatewayError) -> NoReturn:
    """Print ``error CODE: message`` and exit 2: how every command ends on a gateway error."""
    err.print(Text.assemble((f"error {exc.code}", "red"), f": {exc.message}"))
    sys.exit(2)
