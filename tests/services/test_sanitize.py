"""Mail HTML sanitizing: nothing executable survives, remote loads are blocked and counted."""
from __future__ import annotations

import html.parser

import pytest

from tests.corpus.xss import ATTACKER, xss_vectors
from webapp.services.sanitize import sanitize_html, text_to_html

BEACON = "http://127.0.0.1:9/beacon"
VECTORS = xss_vectors(BEACON)
ALLOWED_OUTPUT_ATTRIBUTES = {
    "href", "src", "alt", "title", "style", "width", "height", "align", "valign", "bgcolor",
    "border", "cellpadding", "cellspacing", "colspan", "rowspan", "target", "rel", "dir", "lang",
}
URL_ATTRIBUTES = {"href", "src"}
FORBIDDEN_TAGS = {
    "script", "style", "iframe", "frame", "frameset", "object", "embed", "applet", "form", "input",
    "button", "textarea", "select", "base", "meta", "link", "svg", "math", "template", "noscript",
    "video", "audio", "source",
}


class _Collector(html.parser.HTMLParser):
    """Records every start tag with its attributes, as a browser would tokenize the output."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, {name: value or "" for name, value in attrs}))

    handle_startendtag = handle_starttag


def _elements(output: str) -> list[tuple[str, dict[str, str]]]:
    collector = _Collector()
    collector.feed(output)
    collector.close()
    return collector.elements


def _no_cid(content_id: str) -> str | None:
    return None


def assert_inert(output: str) -> None:
    """Fail when the output holds any construct that could run script or reach a remote host."""
    for tag, attributes in _elements(output):
        assert tag not in FORBIDDEN_TAGS, (tag, output)
        for name, value in attributes.items():
            assert not name.startswith("on"), (name, output)
            assert name in ALLOWED_OUTPUT_ATTRIBUTES, (name, output)
            lowered = "".join(value.split()).lower()
            for needle in ("javascript:", "vbscript:", "data:text", "expression(", "attacker.example", "beacon", "url("):
                assert needle not in lowered, (name, value, output)
            if name in URL_ATTRIBUTES:
                assert lowered.startswith(("https:", "http:", "mailto:", "tel:", "/parts/", "data:image/png")), (value, output)


@pytest.mark.parametrize("vector", VECTORS, ids=[v.vector_id for v in VECTORS])
def test_vector_is_made_inert(vector):
    result = sanitize_html(vector.html, allow_remote=False, cid_url=_no_cid)
    assert_inert(result.html)
    # Sanitizing is stable: re-parsing the output finds nothing new (mutation XSS would).
    again = sanitize_html(result.html, allow_remote=False, cid_url=_no_cid).html
    assert _elements(again) == _elements(result.html)  # nh3 may reorder attributes, nothing more


@pytest.mark.parametrize("vector", VECTORS, ids=[v.vector_id for v in VECTORS])
def test_vector_stays_inert_when_remote_content_is_allowed(vector):
    """Allowing remote images must not let scripts or non-image remote loads through."""
    result = sanitize_html(vector.html, allow_remote=True, cid_url=_no_cid)
    for tag, attributes in _elements(result.html):
        assert tag not in FORBIDDEN_TAGS
        for name, value in attributes.items():
            assert not name.startswith("on")
            lowered = "".join(value.split()).lower()
            assert "javascript:" not in lowered and "expression(" not in lowered and "beacon" not in lowered
            if "attacker.example" in lowered:
                assert (tag, name) in {("img", "src"), ("div", "style")}, (tag, name, value)


def test_checker_catches_live_constructs():
    """The inertness check itself must fail on what it is meant to catch."""
    for live in ['<img src=x onerror="x()">', '<a href="javascript:x()">', "<script>x()</script>",
                 f'<div style="background:url({ATTACKER}/x)">', '<iframe srcdoc="x">']:
        with pytest.raises(AssertionError):
            assert_inert(live)


def test_corpus_is_large_enough():
    assert len(VECTORS) >= 40
    assert len({v.vector_id for v in VECTORS}) == len(VECTORS)


@pytest.mark.parametrize(
    ("html", "blocked"),
    [
        (f'<img src="{ATTACKER}/a.png">', 1),
        (f'<img src="{ATTACKER}/a.png"><img src="https://cdn.example/b.png">', 2),
        ('<img src="//cdn.example/b.png">', 1),
        (f'<p style="color: red; background: url({ATTACKER}/bg.png)">x</p>', 1),
        (f'<p style="background-image: url(\'{ATTACKER}/bg.png\')">x</p>', 1),
        ('<img src="cid:logo@example.org">', 0),
        ("<p>no images</p>", 0),
    ],
)
def test_remote_loads_blocked_and_counted(html, blocked):
    result = sanitize_html(html, allow_remote=False, cid_url=lambda cid: f"/parts/{cid}")
    assert result.blocked_remote == blocked
    assert "cdn.example" not in result.html and "attacker.example" not in result.html


def test_remote_images_kept_when_allowed():
    html = f'<img src="{ATTACKER}/a.png" alt="logo"><p style="color:red;background:url(https://cdn.example/bg.png)">x</p>'
    result = sanitize_html(html, allow_remote=True, cid_url=_no_cid)
    assert result.blocked_remote == 0
    assert _elements(result.html) == [
        ("img", {"src": "http://attacker.example/a.png", "alt": "logo"}),
        ("p", {"style": 'color:red;background:url("https://cdn.example/bg.png")'}),
    ]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("cid:logo@example.org", '<img src="/parts/logo@example.org">'),
        ("CID:%3Clogo@example.org%3E", '<img src="/parts/logo@example.org">'),
        ("cid:unknown@example.org", "<img>"),
        ("cid:", "<img>"),
    ],
)
def test_cid_images_rewritten_through_callback(source, expected):
    known = {"logo@example.org": "/parts/logo@example.org"}
    result = sanitize_html(f'<img src="{source}">', allow_remote=False, cid_url=known.get)
    assert result.html == expected


def test_failing_cid_callback_drops_the_source():
    def broken(content_id: str) -> str | None:
        raise LookupError(content_id)

    assert sanitize_html('<img src="cid:x">', allow_remote=False, cid_url=broken).html == "<img>"


@pytest.mark.parametrize(
    ("source", "kept"),
    [
        ("data:image/png;base64,iVBORw0KGgo=", True),
        ("data:image/jpeg;base64,/9j/4AAQ", True),
        ("data:image/svg+xml;base64,PHN2Zz4=", False),
        ("data:text/html;base64,PHNjcmlwdD4=", False),
        ("data:image/png,<svg>", False),
    ],
)
def test_data_images(source, kept):
    result = sanitize_html(f'<img src="{source}">', allow_remote=False, cid_url=_no_cid)
    assert ("src=" in result.html) is kept
    assert result.blocked_remote == 0


def test_mail_formatting_survives():
    html = (
        '<html><head><title>Newsletter</title><style>p{color:red}</style></head>'
        '<body><table border="0" cellpadding="4" width="600" bgcolor="#ffffff"><tr>'
        '<td align="center" valign="top" style="font-family: Arial; font-size: 14px; color: #333; '
        'position: fixed; z-index: 9">Hi <b>there</b> <font color="red">!</font></td></tr></table>'
        '<a href="https://example.com/offer">offer</a> <a href="mailto:sales@example.com">mail</a>'
        '<ul><li>one</li></ul><blockquote>quoted</blockquote></body></html>'
    )
    output = sanitize_html(html, allow_remote=False, cid_url=_no_cid).html
    assert "Newsletter" not in output and "p{color" not in output
    assert '<table border="0" cellpadding="4" width="600" bgcolor="#ffffff">' in output
    assert 'style="font-family:Arial;font-size:14px;color:#333"' in output
    assert "position" not in output and "z-index" not in output
    assert '<font color="red">!</font>' in output
    assert ("a", {"href": "https://example.com/offer", "target": "_blank", "rel": "noopener noreferrer"}) in _elements(output)
    assert 'href="mailto:sales@example.com"' in output
    assert "<ul><li>one</li></ul><blockquote>quoted</blockquote>" in output


@pytest.mark.parametrize("attribute", ["id", "class", "name"])
def test_dom_clobbering_attributes_removed(attribute):
    output = sanitize_html(f'<p {attribute}="location">x</p><form name="f"></form>', allow_remote=False, cid_url=_no_cid).html
    assert output == "<p>x</p>"


def test_relative_links_removed():
    """A relative link would point into the webmail itself (e.g. a GET that changes state)."""
    output = sanitize_html('<a href="/settings/delete">x</a>', allow_remote=False, cid_url=_no_cid).html
    assert "href" not in output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain <b>not bold</b> & more", "plain &lt;b&gt;not bold&lt;/b&gt; &amp; more"),
        (
            "see https://example.com/a?b=1&c=2.",
            'see <a href="https://example.com/a?b=1&amp;c=2" target="_blank" rel="noopener noreferrer">'
            "https://example.com/a?b=1&amp;c=2</a>.",
        ),
        (
            "(https://en.wikipedia.org/wiki/Foo_(bar))",
            '(<a href="https://en.wikipedia.org/wiki/Foo_(bar)" target="_blank" rel="noopener noreferrer">'
            "https://en.wikipedia.org/wiki/Foo_(bar)</a>)",
        ),
        ('x https://e.example/"onmouseover="alert(1) y', 'x <a href="https://e.example/" target="_blank" rel="noopener noreferrer">https://e.example/</a>&quot;onmouseover=&quot;alert(1) y'),
        ("javascript:alert(1) stays text", "javascript:alert(1) stays text"),
        ("line one\nline two", "line one\nline two"),
    ],
)
def test_text_to_html(text, expected):
    assert text_to_html(text) == expected


def test_text_to_html_output_is_inert():
    output = text_to_html("<script>x()</script> https://a.example/<img src=x onerror=y>")
    assert_inert(output)
    assert [tag for tag, _ in _elements(output)] == ["a"]
