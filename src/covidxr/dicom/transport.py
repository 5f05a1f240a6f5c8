"""The HTTP transport under `covidxr dicomweb`: each answer, status line, headers and body, must arrive whole
within a deadline and a size cap, however the server paces its bytes (requests' and urllib3's own timeouts
bound each read only)."""

from __future__ import annotations

import contextlib
import socket
import threading

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

MAX_ANSWER_BYTES = 512 * 1024 * 1024


class AnswerTooSlow(requests.Timeout):
    """The whole answer did not arrive within the deadline."""


class AnswerTooLarge(requests.RequestException):
    """The answer is larger than MAX_ANSWER_BYTES."""


class Watch:
    """The deadline of one request: once `seconds` have passed, the socket of every connection the request
    checked out is shut down (and again while it lasts, for one connected after the deadline), which ends any
    read it is blocked in, headers or body. requests' and urllib3's timeouts bound each read only, so a server
    sending one byte every few seconds, even of its headers, would otherwise never be cut off."""

    def __init__(self, seconds: float):
        self.seconds, self.expired = seconds, False
        self.connections: list = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._guard, name="dicomweb-deadline", daemon=True)

    def __enter__(self) -> Watch:
        _watches.current = self
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        _watches.current = None
        self._done.set()
        self._thread.join()

    def _guard(self) -> None:
        if self._done.wait(self.seconds):
            return
        self.expired = True
        while True:
            for connection in list(self.connections):
                sock = getattr(connection, "sock", None)
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            if self._done.wait(0.05):
                return


_watches = threading.local()  # the Watch of the request this thread is sending


class _WatchedPool:
    """A urllib3 connection pool that hands each connection it checks out to the sending thread's Watch."""

    def _get_conn(self, timeout: float | None = None):
        connection = super()._get_conn(timeout)
        watch = getattr(_watches, "current", None)
        if watch is not None:
            watch.connections.append(connection)
        return connection


WATCHED_POOLS = {"http": type("WatchedHTTPPool", (_WatchedPool, HTTPConnectionPool), {}),
                 "https": type("WatchedHTTPSPool", (_WatchedPool, HTTPSConnectionPool), {})}


class DeadlineAdapter(HTTPAdapter):
    """Sends each request and reads its answer whole, in pieces as they arrive, within `deadline` seconds
    (status line, headers and body: see Watch) and MAX_ANSWER_BYTES."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = WATCHED_POOLS  # urllib3's documented point of customisation

    def proxy_manager_for(self, proxy: str, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = WATCHED_POOLS
        return manager

    def send(self, request: requests.PreparedRequest, **kwargs) -> requests.Response:
        kwargs["stream"] = True
        pieces, size, response = [], 0, None
        with Watch(self.deadline) as watch:
            try:
                response = super().send(request, **kwargs)
                while piece := response.raw.read1(1 << 16, decode_content=True):
                    pieces.append(piece)
                    size += len(piece)
                    if size > MAX_ANSWER_BYTES:
                        raise AnswerTooLarge(f"an answer of more than {MAX_ANSWER_BYTES:,} bytes")
            except Exception as error:
                if response is not None:
                    response.close()
                if watch.expired and not isinstance(error, AnswerTooLarge):
                    raise self._too_slow(size) from None
                raise
        if watch.expired:  # the shut-down socket ended the answer early (http.client takes that for its end)
            response.close()
            raise self._too_slow(size)
        response._content, response._content_consumed = b"".join(pieces), True
        return response

    def _too_slow(self, size: int) -> AnswerTooSlow:
        return AnswerTooSlow(f"no whole answer within {self.deadline:g} s (the server was still sending it"
                             + (f": {size:,} bytes of the body so far)" if size else ")"))
