"""The metrics door: Prometheus's text format over HTTP (setting ``metrics_listen``), served by `serve`'s parent.

Each scrape reads the ledger (:meth:`gateway.ledger.store.Ledger.gauges`: a few indexed queries), so every node
of a shared ledger reports the same transfers; the maintenance rounds, the data dir's free space and the process
figures are this node's.
No metric names an organ: a label per organ would tell whoever reaches the endpoint who exchanges with whom.
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from gateway.clock import Clock
from gateway.config import host_port
from gateway.health import ACTIONS_WINDOW, Space
from gateway.ledger.store import Ledger
from gateway.lifecycle import OPEN

log = logging.getLogger(__name__)
OPEN_STATES = sorted(state.value for state in OPEN)
Round = tuple[float, float]  # a maintenance round: when it ended (Unix time) and how long it took (seconds)


class GatewayCollector(Collector):
    """The gateway's gauges, read at each scrape."""

    def __init__(
        self, ledger: Ledger, clock: Clock, last_round: Callable[[], Round | None], space: Callable[[], Space]
    ) -> None:
        self.ledger, self.clock, self.last_round, self.space = ledger, clock, last_round, space

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        room = self.space()
        yield _gauge("data_dir_free_bytes", "Free space on the data dir's filesystem", room.free_bytes)
        yield _gauge("data_dir_size_bytes", "Size of the data dir's filesystem", room.total_bytes)
        yield _gauge("data_dir_free_inodes", "Free inodes on the data dir's filesystem", room.free_inodes)
        yield _gauge("data_dir_inodes", "Inodes of the data dir's filesystem (0: not counted)", room.total_inodes)
        try:
            gauges = self.ledger.gauges(now - ACTIONS_WINDOW)
        except SQLAlchemyError as exc:
            log.warning("metrics: the ledger did not answer: %s", " ".join(str(exc).split())[:300])
            gauges = None
        yield _gauge("ledger_up", "1 if the ledger answered this scrape", float(gauges is not None))
        if gauges is None:
            return
        count = _gauge("open_transfers", "Transfers whose life is not over", labels=["state"])
        age = _gauge("oldest_open_transfer_age_seconds", "How long the state's oldest has not moved", labels=["state"])
        for state in OPEN_STATES:
            n, oldest = gauges.open_transfers.get(state, (0, now))
            count.add_metric([state], n)
            age.add_metric([state], max((now - oldest).total_seconds(), 0))
        yield count
        yield age
        yield _gauge("transfers_retrying", "Transfers to be tried again after a gateway fault", gauges.retrying)
        unwritten, owed_since = gauges.receipts_unwritten
        yield _gauge("receipts_unwritten", "Receipts owed but not yet written", unwritten)
        owed = max((now - owed_since).total_seconds(), 0) if owed_since else 0
        yield _gauge("oldest_receipt_unwritten_age_seconds", "How long the oldest unwritten receipt is owed", owed)
        actions = _gauge("audit_events_last_hour", "Audit events of the last hour, by action", labels=["action"])
        for action, n in sorted(gauges.actions.items()):
            actions.add_metric([action], n)
        yield actions
        if (done := self.last_round()) is not None:
            yield _gauge("maintenance_round_end_seconds", "When this node's last maintenance round ended", done[0])
            yield _gauge("maintenance_round_seconds", "How long this node's last maintenance round took", done[1])


def _gauge(name: str, documentation: str, value: float | None = None, **kwargs: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"flam_gateway_{name}", documentation, value=value, **kwargs)


class _Quiet(WSGIRequestHandler):
    timeout = 10  # a client that stalls (in its TLS handshake, its request) holds its thread this long at most

    def log_message(self, format: str, *args: object) -> None:
        """No line in the log per scrape."""


def tls_context(cert: str, key: str, client_ca: str = "") -> ssl.SSLContext:
    """A server context for HTTPS (TLS 1.2 or later); with ``client_ca`` every client must show a certificate it
    issued. Raises OSError or ssl.SSLError for a file that cannot be read or a key that does not fit."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def metrics_server(listen: str, collector: Collector, tls: ssl.SSLContext | None = None) -> ThreadingWSGIServer:
    """An HTTP server (HTTPS with ``tls``) bound to ``listen`` (HOST:PORT) answering with the collector's metrics
    and this process's CPU and memory; bound at once (a port in use fails here), it answers once ``serve_forever``
    runs. A TLS handshake runs in the request's own thread, never in the one that accepts."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    host, port = host_port(listen)

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        def get_request(self) -> tuple[socket.socket, Any]:
            connection, address = super().get_request()
            if tls is None:
                return connection, address
            return tls.wrap_socket(connection, server_side=True, do_handshake_on_connect=False), address

        def handle_error(self, request: Any, client_address: Any) -> None:
            """One line for a client refused or gone (a plain HTTP request, no or a wrong client certificate)."""
            log.info("metrics: a request from %s failed: %s", client_address[0], sys.exc_info()[1])

    return make_server(host, port, make_wsgi_app(registry), Server, handler_class=_Quiet)
