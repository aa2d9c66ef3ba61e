"""The real message view in a real browser: hostile HTML mail runs nothing and reaches nothing.

Every vector of the XSS corpus (plus vectors aimed at the page around the frame) is delivered
as an HTML mail into the user's hosted account; the user logs in through the login form in
Chromium and opens the real message views. Script that ran would request ``/beacon/<id>`` on
the app's own server, set ``window.top.pwned`` or post a message to the top page; a remote
load would show up as a request to a host other than the app's. Foreign requests are aborted
(nothing reaches the internet) but still recorded.
"""
from __future__ import annotations

import threading
from urllib.parse import urlsplit

import pytest
from werkzeug.wrappers import Request, Response

from tests.corpus.xss import Vector, xss_vectors
from tests.factories import PASSWORD
from tests.fixtures.browser import serve_wsgi
from tests.mail.helpers import deliver_raw, html_mail
from tests.mail.test_views import PNG

pytestmark = pytest.mark.browser

SETTLE_MS = 1_500
# Aimed at the page around the frame: its globals, its DOM, its messages, its navigation.
TOP_VECTORS = [
    ("top-global", '<img src=x onerror="window.top.pwned=1">'),
    ("top-postmessage", '<img src=x onerror="parent.postMessage(\'pwned\', \'*\')">'),
    ("top-navigate", '<img src=x onerror="top.location=\'{beacon}/top-navigate\'">'),
    ("top-form-target", '<form action="{beacon}/top-form-target" target="_top" method="get">'
                        '<input name=x value=1></form>'),
    ("cid-image", '<p>logo: <img src="cid:logo@x" alt="logo"></p>'),
]


class Site:
    """The real app, plus a beacon and a test page of frames on the same origin."""

    def __init__(self, app) -> None:
        self.app = app
        self.base = ""
        self.lock = threading.Lock()
        self.beacons: list[str] = []
        self.frames: list[str] = []
        self.vector_ids: list[str] = []

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/beacon/"):
            with self.lock:
                self.beacons.append(path)
            return Response(status=204)(environ, start_response)
        if path == "/test-frames":
            # A page of the app's origin framing the real message views, many at once.
            remote = Request(environ).args.get("remote") == "1"
            frames = "".join(f'<iframe src="{url}{"?remote=1" if remote else ""}" width="600" '
                             'height="300"></iframe>' for url in self.frames)
            return Response(f"<!doctype html><body>{frames}</body>",
                            mimetype="text/html")(environ, start_response)
        return self.app(environ, start_response)


def all_vectors(beacon: str) -> list[Vector]:
    extra = [Vector(vid, html.replace("{beacon}", beacon)) for vid, html in TOP_VECTORS]
    return xss_vectors(beacon) + extra


VECTORS_PER_MAIL = 8  # a few vectors per mail keeps the page count (and the test) small


@pytest.fixture
def site(app, user):
    """The served app with the vectors delivered to the user as HTML mails, a few per mail.

    Each vector sits between its own start and end markers, so the test can see that every
    one was rendered and none swallowed the ones after it.
    """
    site = Site(app)
    with serve_wsgi(site) as base:
        site.base = base
        vectors = all_vectors(f"{base}/beacon")
        site.vector_ids = [v.vector_id for v in vectors]
        for start in range(0, len(vectors), VECTORS_PER_MAIL):
            group = vectors[start:start + VECTORS_PER_MAIL]
            html = "".join(f"<div><p>vector {v.vector_id}</p>{v.html}<p>end {v.vector_id}</p></div>"
                           for v in group)
            message = deliver_raw(user, html_mail(html, subject=f"vectors from {group[0].vector_id}",
                                                  inline_images={"logo@x": PNG}))
            site.frames.append(f"/mail/message/{message.id}")
        yield site


def log_in(page, base: str, user) -> None:
    """Log in through the real form."""
    page.goto(f"{base}/login")
    page.fill('input[name="email"]', user.email)
    page.fill('input[name="password"]', PASSWORD)
    page.click('input[type="submit"], button[type="submit"]')
    page.wait_for_load_state("load")
    assert "/login" not in page.url


def watch(context, page, base: str):
    """Record every request and every response status; abort anything not for the app."""
    origin = urlsplit(base).netloc
    requests: list[tuple[str, str]] = []
    statuses: dict[str, int] = {}

    def guard(route):
        if urlsplit(route.request.url).netloc == origin or route.request.url.startswith(("data:", "about:")):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", guard)
    page.on("request", lambda request: requests.append((request.url, request.resource_type)))
    page.on("response", lambda response: statuses.__setitem__(response.url, response.status))
    return requests, statuses


def foreign(requests, base):
    origin = urlsplit(base).netloc
    return [(url, kind) for url, kind in requests
            if not url.startswith(("data:", "about:")) and urlsplit(url).netloc != origin]


def open_all(page, site, remote: bool):
    # A shared, loaded machine may take a while to serve every frame.
    page.goto(f"{site.base}/test-frames{'?remote=1' if remote else ''}", wait_until="load",
              timeout=60_000)
    page.wait_for_timeout(SETTLE_MS)


def test_control_detector_sees_script_in_an_unsandboxed_frame(browser_context, app, user):
    """Control: the same vectors, unsanitized in a plain same-origin page, are caught."""
    site = Site(app)

    def raw_page(environ, start_response):
        if environ["PATH_INFO"] == "/raw":
            body = "".join(v.html for v in all_vectors(f"{site.base}/beacon")
                           if v.vector_id in ("img-onerror", "top-global", "top-postmessage"))
            return Response(f"<!doctype html><body>{body}</body>", mimetype="text/html")(
                environ, start_response)
        return site(environ, start_response)

    with serve_wsgi(raw_page) as base:
        site.base = base
        page = browser_context.new_page()
        page.add_init_script("window.__posted = []; window.addEventListener('message', "
                             "function (e) { window.__posted.push(String(e.data)); });")
        page.goto(f"{base}/raw", wait_until="load")
        page.wait_for_function("window.pwned === 1 && window.__posted.length > 0")
        page.wait_for_timeout(300)
        with site.lock:
            assert "/beacon/img-onerror" in site.beacons


@pytest.mark.parametrize("remote", [False, True], ids=["images-off", "images-on"])
def test_hostile_mail_runs_nothing_in_the_message_view(browser_context, site, user, remote):
    page = browser_context.new_page()
    page.add_init_script("window.__posted = []; window.addEventListener('message', "
                         "function (e) { window.__posted.push(String(e.data)); });")
    log_in(page, site.base, user)
    requests, statuses = watch(browser_context, page, site.base)
    open_all(page, site, remote)
    message_pages = [f for f in page.frames if "/mail/message/" in f.url and "/body" not in f.url]
    bodies = [f for f in page.frames if "/body" in f.url]
    assert len(message_pages) == len(site.frames)
    assert len(bodies) == len(site.frames)  # every vector's message has its sandboxed body frame
    with site.lock:
        assert site.beacons == []
    assert page.evaluate("window.pwned") is None
    assert page.evaluate("window.__posted") == []
    assert page.url.endswith("/test-frames" + ("?remote=1" if remote else ""))
    for frame in message_pages:
        assert frame.evaluate("window.pwned") is None
        assert frame.evaluate("window.top.pwned") is None
    # The text after each vector rendered: no vector swallowed what follows it.
    text = "".join(f.content() for f in bodies)
    assert [v for v in site.vector_ids if f"end {v}" not in text] == []
    leaving = foreign(requests, site.base)
    if remote:
        # Showing images lets images (and style backgrounds, which are images) load; nothing else.
        assert [r for r in leaving if r[1] != "image"] == []
        assert leaving, "show images loaded no remote image: the switch does not work"
    else:
        assert leaving == []
    cid = [url for url in statuses if "/cid/logo@x" in url]
    assert cid and all(statuses[url] == 200 for url in cid), statuses


def test_a_message_opened_directly(browser_context, site, user):
    """One hostile message opened as a top-level page, as a user does it."""
    page = browser_context.new_page()
    log_in(page, site.base, user)
    requests, _statuses = watch(browser_context, page, site.base)
    target = next(url for url in site.frames)
    page.goto(site.base + target, wait_until="load")
    page.wait_for_timeout(SETTLE_MS)
    with site.lock:
        assert site.beacons == []
    assert foreign(requests, site.base) == []
    assert page.evaluate("window.pwned") is None
    assert page.locator("iframe.mail-html").count() == 1


def test_list_keyboard_and_select_all(browser_context, app, user):
    """mail.js: "j" walks the list, "All" checks every row, and the bulk form then works."""
    for n in range(3):
        deliver_raw(user, html_mail(f"<p>body {n}</p>", subject=f"Row {n}"))
    with serve_wsgi(app) as base:
        page = browser_context.new_page()
        log_in(page, base, user)
        page.goto(f"{base}/mail/")
        page.keyboard.press("j")
        page.keyboard.press("j")
        assert page.evaluate("document.activeElement.textContent").strip() == "Row 1"
        page.check("input[data-select-all]")
        assert page.locator('input[name="ids"]:checked').count() == 3
        page.click('button[name="action"][value="read"]')
        page.wait_for_load_state("load")
        assert "Marked 3 messages as read." in page.content()
        assert page.locator(".message-row.unread").count() == 0
