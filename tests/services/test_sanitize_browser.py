"""The sanitizer against a real browser: sanitized vectors run no script and reach no remote host.

Each vector is served as its own document from a local WSGI server and opened in Chromium.
Script that runs sends a beacon request to the server; a remote load shows up as a request to
a host other than 127.0.0.1 (the context aborts those). The raw vectors are opened the same
way first, to prove the detector sees what it is meant to see.
"""
from __future__ import annotations

import html
import threading
import time
from urllib.parse import urlsplit

import pytest
from werkzeug.wrappers import Request, Response

from tests.corpus.xss import xss_vectors
from tests.fixtures.browser import serve_wsgi
from webapp.services.sanitize import sanitize_html

pytestmark = pytest.mark.browser

# A strict policy like the message view's: nothing loads or runs except same-origin images.
STRICT_CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; frame-src 'self'"
SETTLE_MS = 1_000


class VectorSite:
    """A tiny WSGI site serving each vector raw or sanitized, and recording beacons."""

    def __init__(self) -> None:
        self.base = ""
        self.beacons: set[str] = set()
        self.lock = threading.Lock()

    def seen_beacons(self) -> set[str]:
        with self.lock:
            return set(self.beacons)

    def vectors(self):
        return xss_vectors(f"{self.base}/beacon")

    def sanitized(self, vector_html: str, allow_remote: bool) -> str:
        return sanitize_html(vector_html, allow_remote=allow_remote, cid_url=lambda cid: None).html

    def __call__(self, environ, start_response):
        request = Request(environ)
        parts = request.path.strip("/").split("/")
        vectors = {vector.vector_id: vector for vector in self.vectors()}
        if parts[0] == "beacon" and len(parts) == 2:
            with self.lock:
                self.beacons.add(parts[1])
            response = Response(status=204)
        elif parts[0] == "frames" and len(parts) == 2:
            frames = "".join(f'<iframe src="/vector/{vector_id}/{parts[1]}"></iframe>' for vector_id in vectors)
            response = Response(f"<!doctype html><html><body>{frames}</body></html>", mimetype="text/html")
        elif parts[0] == "vector" and len(parts) == 3 and parts[1] in vectors:
            vector_html = vectors[parts[1]].html
            if parts[2] != "raw":
                vector_html = self.sanitized(vector_html, allow_remote=parts[2] == "remote-allowed")
            response = Response(f"<!doctype html><html><body>{vector_html}</body></html>", mimetype="text/html")
        elif parts[0] == "sandboxed":
            frames = "".join(
                f'<iframe sandbox title="{vector_id}" srcdoc="'
                + html.escape(self.sanitized(vector.html, allow_remote=False) + f"<p>rendered {vector_id}</p>")
                + '"></iframe>'
                for vector_id, vector in vectors.items()
            )
            response = Response(f"<!doctype html><html><body>{frames}</body></html>", mimetype="text/html")
            response.headers["Content-Security-Policy"] = STRICT_CSP
        else:
            response = Response("not found", status=404)
        return response(environ, start_response)


@pytest.fixture(scope="module")
def vector_site():
    site = VectorSite()
    with serve_wsgi(site) as base:
        site.base = base
        yield site


def _open(browser_context, site: VectorSite, path: str) -> tuple[set[str], list[str], object]:
    """Open a page; return beacons seen, URLs that tried to leave 127.0.0.1, and the page."""
    with site.lock:
        site.beacons.clear()
    escaped: list[str] = []

    def guard(route):
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            escaped.append(route.request.url)
            route.abort()

    browser_context.route("**/*", guard)
    page = browser_context.new_page()
    page.goto(f"{site.base}{path}", wait_until="load")
    page.wait_for_timeout(SETTLE_MS)
    return site.seen_beacons(), escaped, page


def _vectors_seen(vectors, beacons: set[str], escaped: list[str]) -> set[str]:
    seen = set(beacons)
    for vector in vectors:
        if any(f"/{vector.vector_id}" in url for url in escaped):
            seen.add(vector.vector_id)
    return seen


def test_detector_sees_raw_vectors_fire(browser_context, vector_site):
    """Control: unsanitized, the vectors marked as firing do run script or reach the attacker."""
    beacons, escaped, page = _open(browser_context, vector_site, "/frames/raw")
    vectors = vector_site.vectors()
    expected = {vector.vector_id for vector in vectors if vector.fires}
    deadline = time.monotonic() + 10  # a loaded machine may run late handlers late
    while expected - _vectors_seen(vectors, vector_site.seen_beacons(), escaped) and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    seen = _vectors_seen(vectors, vector_site.seen_beacons(), escaped)
    assert expected - seen == set(), f"detector missed {sorted(expected - seen)}"


@pytest.mark.parametrize("mode", ["clean", "remote-allowed"])
def test_sanitized_vectors_run_no_script(browser_context, vector_site, mode):
    beacons, escaped, page = _open(browser_context, vector_site, f"/frames/{mode}")
    assert beacons == set()
    if mode == "clean":
        assert escaped == []
    else:
        # Allowing remote content may load images and style backgrounds, nothing else.
        allowed_paths = ("/track/", "/pr/", "/bg/", "/bgi/")
        assert [url for url in escaped if not urlsplit(url).path.startswith(allowed_paths)] == []
    assert len(page.frames) == len(vector_site.vectors()) + 1  # nothing navigated the page away


def test_sanitized_vectors_in_sandboxed_frames_under_csp(browser_context, vector_site):
    """The message view's setup: sanitized HTML in sandboxed srcdoc frames under a strict CSP."""
    beacons, escaped, page = _open(browser_context, vector_site, "/sandboxed")
    assert beacons == set() and escaped == []
    rendered = [frame for frame in page.frames[1:] if "rendered " in frame.content()]
    assert len(rendered) == len(vector_site.vectors())
