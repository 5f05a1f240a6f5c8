"""What protects the service from its clients and its clients' browsers (docs/reference.md, "HTTP service").

- Upload size: enforced while the body streams in, by FastAPI's own `max_body_size` (a declared
  Content-Length over the limit is refused before any byte is read; a chunked body is cut off at the limit),
  not after Starlette has spooled it to disk; see `body_limit`.
- Trusted hosts: a request whose Host header is not one of the service's names is refused (DNS rebinding
  would otherwise let any web page drive a service on a workstation). Default: localhost, 127.0.0.1, [::1]
  and the bind address; `covidxr serve --allow-host NAME` adds a name.
- Security headers on every answer: X-Content-Type-Options, X-Frame-Options, Referrer-Policy, and a
  Content-Security-Policy; the HTML pages allow exactly their own inline scripts (by hash) and nothing
  from another origin.
- API documentation (Swagger UI, ReDoc) served from the package fastapi-offline ships (no CDN: a hospital
  network often has no internet).
- A memory budget: decoding is bounded by the pixels in flight, so one huge image waits for the others
  instead of adding to them.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DEFAULT_ALLOWED_HOSTS = ("localhost", "127.0.0.1", "[::1]")
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file, beyond the file's own limit
DOCS_ASSETS = "/docs-assets"
BASE_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S | re.I)


def host_name(header: str) -> str:
    """The host of a Host header: `Example.org:8000` -> `example.org`, `[::1]:8000` -> `[::1]`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[:header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_allowed(header: str, allowed: Sequence[str]) -> bool:
    host = host_name(header)
    for pattern in (name.lower() for name in allowed):
        if pattern == "*" or host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return bool(host)
    return False


def allowed_hosts(bind_host: str | None = None, extra: Sequence[str] = ()) -> list[str]:
    """The names a service bound to `bind_host` answers to: loopback names, the bind address, `extra`."""
    names = [*DEFAULT_ALLOWED_HOSTS, *extra]
    if bind_host and bind_host not in ("0.0.0.0", "::"):
        names.append(f"[{bind_host}]" if ":" in bind_host else bind_host)
    return list(dict.fromkeys(name.lower() for name in names))


def content_security_policy(html: str, workers: bool = False) -> str:
    """A policy for one HTML page: its own inline scripts by hash, everything else from this origin only (styles
    may be inline: the pages set widths from script)."""
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
                      for script in _INLINE_SCRIPT.findall(html))
    return "; ".join([
        "default-src 'self'", f"script-src 'self' {hashes}".strip(), "style-src 'self' 'unsafe-inline'",
        "img-src 'self' blob: data:", "connect-src 'self'", "font-src 'self'", "object-src 'none'",
        "base-uri 'none'", "frame-ancestors 'none'", "form-action 'self'",
        *(["worker-src 'self' blob:"] if workers else [])])


def html_page(html: str, workers: bool = False) -> HTMLResponse:
    return HTMLResponse(html, headers={"Content-Security-Policy": content_security_policy(html, workers)})


def docs_assets() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


def add_offline_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc from the assets fastapi-offline ships: no request leaves the service."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=docs_assets()), name="docs-assets")
    swagger = get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} API",
                                  swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                  swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                  swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png").body.decode()
    redoc = get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} API",
                           redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
                           redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png", with_google_fonts=False).body.decode()

    @app.get("/docs", include_in_schema=False)
    def swagger_page() -> HTMLResponse:
        return html_page(swagger)

    @app.get("/redoc", include_in_schema=False)
    def redoc_page() -> HTMLResponse:
        return html_page(redoc, workers=True)


def body_limit(max_upload: int) -> int:
    """The request body limit for a file limit: the file plus its multipart boundaries and part headers."""
    return max_upload + MULTIPART_OVERHEAD


def install_guards(app: FastAPI, hosts: Sequence[str], max_upload: int, error) -> None:
    """Trusted hosts, a declared body length over the limit, and security headers on `app`;
    `error(request, status, code, message)` builds the service's JSON error answers. Registered before the
    request-id middleware, which wraps them. (A declared length is refused here because FastAPI's body limit
    answers it in plain text; a body without one is cut off by that limit, answered by the app's handlers.)"""

    @app.middleware("http")
    async def declared_length(request: Request, call_next):
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > body_limit(max_upload):
            return error(request, 413, "too_large", f"upload over the limit of {max_upload:,} bytes")
        return await call_next(request)
    @app.middleware("http")
    async def trusted_host(request: Request, call_next):
        header = request.headers.get("host", "")
        if not host_allowed(header, hosts):
            return error(request, 400, "host_not_allowed",
                         f"Host {header[:100]!r} is not a name of this service; allowed: {', '.join(hosts)} "
                         "(covidxr serve --allow-host NAME adds one)")
        return await call_next(request)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for name, value in BASE_HEADERS.items():
            response.headers.setdefault(name, value)
        response.headers.setdefault("Content-Security-Policy", API_POLICY)
        return response


class PixelBudget:
    """At most `capacity` decoded pixels in flight; a request reserves its image's pixel count (a single image
    over the capacity runs alone). Bounds the service's memory whatever the mix of uploads."""

    def __init__(self, capacity: int):
        self.capacity, self.in_use = capacity, 0
        self._changed = threading.Condition()

    @contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        cost = max(1, min(pixels, self.capacity))
        with self._changed:
            self._changed.wait_for(lambda: self.in_use + cost <= self.capacity)
            self.in_use += cost
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= cost
                self._changed.notify_all()
            release_free_memory()


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc()
M_MMAP_THRESHOLD = -3


def return_large_blocks_to_the_system() -> None:
    """glibc only: a fixed mmap threshold (128 KiB), so every large pixel buffer is its own mapping and goes back
    to the system when freed (glibc's default raises the threshold after the first frees, and decoded images
    then stay in the heap: the service grew from 0.24 to 2.7 GB under load)."""
    if _LIBC is not None:
        _LIBC.mallopt(M_MMAP_THRESHOLD, 128 * 1024)


def release_free_memory() -> None:
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
