"""Make untrusted mail HTML safe to show, and turn plain-text mail into safe HTML.

The HTML sanitizer is nh3 (ammonia): an allow-list of tags, attributes, URL schemes and CSS
properties. On top of it, one attribute filter decides about every URL that would be loaded:
``cid:`` images go through the caller's ``cid_url``; remote images and remote ``url()`` in
styles are dropped (and counted) unless the user allowed remote content, because loading them
tells the sender that and when the mail was read; ``data:`` URLs are kept only for raster
images in ``<img src>`` (they load nothing and run nothing, and some clients embed signatures
that way), never SVG and never in links.

The output is meant to be shown inside a sandboxed iframe under a strict Content-Security-Policy
as a second line of defense; it must be safe even without them.
"""
from __future__ import annotations

import dataclasses
import html as html_lib
import re
from collections.abc import Callable
from urllib.parse import unquote

import nh3

_MAIL_TAGS = (set(nh3.ALLOWED_TAGS) - {"area", "map"}) | {"font", "big", "tfoot", "center"}
_COMMON_ATTRIBUTES = {"style", "title", "dir", "lang", "align", "valign", "width", "height", "bgcolor"}
# No id, class or name: mail must not be able to clobber the page's DOM names or reuse its CSS.
_MAIL_ATTRIBUTES = {
    "*": _COMMON_ATTRIBUTES,
    "a": {"href"},
    "img": {"src", "alt", "border", "hspace", "vspace"},
    "table": {"border", "cellpadding", "cellspacing", "summary"},
    "td": {"colspan", "rowspan", "nowrap"},
    "th": {"colspan", "rowspan", "nowrap", "scope"},
    "col": {"span"},
    "colgroup": {"span"},
    "font": {"color", "face", "size"},
    "ol": {"start", "type"},
    "ul": {"type"},
    "li": {"value"},
    "blockquote": {"cite"},
    "q": {"cite"},
    "del": {"cite", "datetime"},
    "ins": {"cite", "datetime"},
    "time": {"datetime"},
    "hr": {"size", "noshade", "color"},
}
# Script-bearing or page-escaping elements whose *content* must go too, not just the tags.
_DROP_WITH_CONTENT = {
    "script", "style", "title", "template", "noscript", "noembed", "noframes", "xmp",
    "iframe", "frame", "frameset", "object", "embed", "applet", "textarea", "select", "svg", "math",
}
# Layout properties that cannot escape the message box (no position, z-index, behavior, content).
_SAFE_STYLE_PROPERTIES = {
    "color", "background", "background-color", "font", "font-family", "font-size", "font-style",
    "font-weight", "font-variant", "line-height", "letter-spacing", "word-spacing", "text-align",
    "text-decoration", "text-indent", "text-transform", "white-space", "vertical-align",
    "direction", "border", "border-top", "border-right", "border-bottom", "border-left",
    "border-color", "border-style", "border-width", "border-radius", "border-collapse",
    "border-spacing", "border-top-color", "border-bottom-color", "border-left-color",
    "border-right-color", "border-top-width", "border-bottom-width", "border-left-width",
    "border-right-width", "border-top-style", "border-bottom-style", "border-left-style",
    "border-right-style", "padding", "padding-top", "padding-right", "padding-bottom",
    "padding-left", "margin", "margin-top", "margin-right", "margin-bottom", "margin-left",
    "width", "height", "min-width", "max-width", "min-height", "max-height", "display", "float",
    "clear", "list-style-type", "table-layout", "word-break", "word-wrap", "overflow-wrap",
    "text-overflow", "overflow", "opacity", "visibility",
}
_LINK_SCHEMES = ("http:", "https:", "mailto:", "tel:")
_SAFE_DATA_IMAGE = re.compile(r"(?i)^data:image/(?:png|gif|jpe?g|webp);base64,[a-z0-9+/=\s]*$")
_REMOTE_URL = re.compile(r"(?i)^(?:https?:)?//")
_CSS_URL = re.compile(r"""(?i)url\(\s*(['"]?)(.*?)\1\s*\)""")
# Anything that could make CSS load, run or hide a URL: escapes, functions that fetch, old IE hooks.
_CSS_FORBIDDEN = re.compile(r"(?i)\\|expression|javascript|vbscript|behavior|binding|@import|image-set|image\(|src\(")
_URL_IN_TEXT = re.compile(r"""(?i)\bhttps?://[^\s<>"'`]+""")
_URL_TRAILING_PUNCTUATION = ".,;:!?]}'\""


@dataclasses.dataclass(frozen=True)
class SanitizedHtml:
    """Safe HTML plus how many remote resources were blocked (to offer "show remote images")."""

    html: str
    blocked_remote: int


def _clean_style(value: str, allow_remote: bool, blocked: list[int]) -> str | None:
    """Keep the CSS declarations that load nothing remote (unless allowed) and run nothing."""
    kept = []
    for declaration in value.split(";"):
        declaration = declaration.strip()
        if not declaration:
            continue
        if _CSS_FORBIDDEN.search(declaration):
            continue
        urls = [unquote(match.group(2)).strip() for match in _CSS_URL.finditer(declaration)]
        if urls or "url(" in declaration.lower():
            remote = [url for url in urls if _REMOTE_URL.match(url)]
            if remote and not allow_remote:
                blocked[0] += len(remote)
                continue
            if len(remote) != len(urls) or not urls:
                continue  # only plain remote URLs are ever loaded; data:, cid: and the rest are not
        kept.append(declaration)
    return ";".join(kept) or None


def _clean_image_source(value: str, allow_remote: bool, cid_url: Callable[[str], str | None], blocked: list[int]) -> str | None:
    """Decide an <img src>: rewrite cid:, keep raster data:, keep remote only when allowed."""
    source = value.strip()
    lowered = source.lower()
    if lowered.startswith("cid:"):
        content_id = unquote(source[4:]).strip().strip("<>")
        if not content_id:
            return None
        try:
            return cid_url(content_id)
        except Exception:  # noqa: BLE001 - a failing lookup means "no such part", never a crash
            return None
    if lowered.startswith(("http:", "https:", "//")):
        if allow_remote and not lowered.startswith("//"):
            return source
        blocked[0] += 1
        return None
    if _SAFE_DATA_IMAGE.match(source):
        return source
    return None


def sanitize_html(html: str, *, allow_remote: bool, cid_url: Callable[[str], str | None]) -> SanitizedHtml:
    """Return mail HTML with everything executable removed and remote loads blocked unless allowed."""
    blocked = [0]

    def attribute_filter(tag: str, attribute: str, value: str) -> str | None:
        if attribute == "style":
            return _clean_style(value, allow_remote, blocked)
        if tag == "img" and attribute == "src":
            return _clean_image_source(value, allow_remote, cid_url, blocked)
        if tag == "a" and attribute == "href":
            # Relative links would point into this application; only absolute, harmless schemes.
            return value if value.strip().lower().startswith(_LINK_SCHEMES) else None
        if attribute in ("cite",):
            return value if value.strip().lower().startswith(("http:", "https:")) else None
        return value

    cleaned = nh3.clean(
        html,
        tags=_MAIL_TAGS,
        clean_content_tags=_DROP_WITH_CONTENT,
        attributes=_MAIL_ATTRIBUTES,
        attribute_filter=attribute_filter,
        strip_comments=True,
        link_rel="noopener noreferrer",
        url_schemes={"http", "https", "mailto", "tel", "cid", "data"},
        filter_style_properties=_SAFE_STYLE_PROPERTIES,
        set_tag_attribute_values={"a": {"target": "_blank"}},
    )
    return SanitizedHtml(html=cleaned, blocked_remote=blocked[0])


def _trim_url(url: str) -> str:
    """Drop sentence punctuation after a URL, keeping a ")" that closes a "(" inside it."""
    while url:
        if url[-1] in _URL_TRAILING_PUNCTUATION:
            url = url[:-1]
        elif url[-1] == ")" and url.count("(") < url.count(")"):
            url = url[:-1]
        else:
            break
    return url


def text_to_html(text: str) -> str:
    """Escape plain-text mail and link its http(s) URLs; show it in a white-space: pre-wrap element."""
    pieces = []
    position = 0
    for match in _URL_IN_TEXT.finditer(text):
        stripped = _trim_url(match.group(0))
        end = match.start() + len(stripped)
        pieces.append(html_lib.escape(text[position : match.start()]))
        pieces.append(
            f'<a href="{html_lib.escape(stripped, quote=True)}" target="_blank" '
            f'rel="noopener noreferrer">{html_lib.escape(stripped)}</a>'
        )
        position = end
    pieces.append(html_lib.escape(text[position:]))
    return "".join(pieces)
