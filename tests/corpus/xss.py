"""XSS and tracking vectors for the mail HTML sanitizer, shared by the unit and browser tests.

Every vector, if it got through, either runs script that requests ``{beacon}/<id>`` or loads a
resource from ``ATTACKER`` (a remote host that mail must not reach before the user allows it).
``fires`` marks the vectors that do run script when the raw HTML is opened in Chromium without
user interaction: the browser test proves its detector works on those before trusting "nothing
ran" for the sanitized output.
"""
from __future__ import annotations

import dataclasses

ATTACKER = "http://attacker.example"


@dataclasses.dataclass(frozen=True)
class Vector:
    """One hostile HTML snippet; `kind` is "script" (runs code) or "load" (reaches a remote host)."""

    vector_id: str
    html: str
    kind: str = "script"
    fires: bool = False


# (id, template, kind, fires-raw-in-chromium). {b} is a JS statement that sends the beacon.
_TEMPLATES = [
    ("script-tag", "<script>{b}</script>", "script", True),
    ("script-uppercase", "<SCRIPT>{b}</SCRIPT>", "script", True),
    ("script-after-textarea", "<textarea></textarea><script>{b}</script>", "script", True),
    ("script-split-tag", "<scr<script>ipt>{b}</script>", "script", False),
    ("script-nested-angle", "<<script>script>{b};<</script>/script>", "script", False),
    ("img-onerror", '<img src="x" onerror="{b}">', "script", True),
    ("img-onerror-mixed-case", '<img src=x oNeRrOr="{b}">', "script", True),
    ("img-onerror-entities", "<img src=x onerror=\"&#x66;&#x65;tch('{beacon}/img-onerror-entities')\">", "script", True),
    ("img-onerror-js-escape", "<img src=x onerror=\"\\u0066etch('{beacon}/img-onerror-js-escape')\">", "script", True),
    ("img-javascript-src", '<IMG SRC="javascript:{b}">', "script", False),
    ("svg-onload", '<svg onload="{b}"></svg>', "script", True),
    ("svg-script", "<svg><script>{b}</script></svg>", "script", True),
    ("svg-animate-onbegin", '<svg><animate onbegin="{b}" attributeName="x" dur="1s"></animate></svg>', "script", True),
    ("svg-xlink-href", '<svg><a xlink:href="javascript:{b}"><text x="20" y="20">x</text></a></svg>', "script", False),
    ("math-xlink-href", '<math><mi xlink:href="javascript:{b}">x</mi></math>', "script", False),
    ("body-onload", '<body onload="{b}">hi</body>', "script", True),
    ("details-ontoggle", '<details open ontoggle="{b}"><summary>s</summary></details>', "script", True),
    ("audio-onerror", '<audio src="x" onerror="{b}"></audio>', "script", True),
    ("video-source-onerror", '<video><source src="x" onerror="{b}"></video>', "script", True),
    ("input-image-onerror", '<input type="image" src="x" onerror="{b}">', "script", True),
    ("input-autofocus-onfocus", '<input autofocus onfocus="{b}">', "script", False),
    ("div-onmouseover", '<div onmouseover="{b}">hover me</div>', "script", False),
    ("a-onclick", '<a href="https://ok.example/" onclick="{b}">ok</a>', "script", False),
    ("a-javascript", '<a href="javascript:{b}">click</a>', "script", False),
    ("a-javascript-case", '<a href="JaVaScRiPt:{b}">click</a>', "script", False),
    ("a-javascript-entity", '<a href="&#106;avascript:{b}">click</a>', "script", False),
    ("a-javascript-tab", '<a href="java&#x09;script:{b}">click</a>', "script", False),
    ("a-javascript-leading-space", '<a href=" &#14; javascript:{b}">click</a>', "script", False),
    ("a-vbscript", '<a href="vbscript:msgbox(1)">click</a>', "script", False),
    ("a-data-html", '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">click</a>', "script", False),
    ("form-action", '<form action="javascript:{b}"><input type="submit" value="go"></form>', "script", False),
    ("button-formaction", '<form><button formaction="javascript:{b}">go</button></form>', "script", False),
    ("iframe-javascript", '<iframe src="javascript:{b}"></iframe>', "script", True),
    ("iframe-srcdoc", '<iframe srcdoc="&lt;script&gt;{b}&lt;/script&gt;"></iframe>', "script", True),
    ("iframe-data", '<iframe src="data:text/html,&lt;script&gt;{b}&lt;/script&gt;"></iframe>', "script", True),
    ("object-data-html", '<object data="data:text/html,&lt;script&gt;{b}&lt;/script&gt;"></object>', "script", True),
    ("embed-javascript", '<embed src="javascript:{b}">', "script", False),
    ("meta-refresh", '<meta http-equiv="refresh" content="0;url={beacon}/meta-refresh">', "script", True),
    ("noscript-mxss", '<noscript><p title="</noscript><img src=x onerror="{b}">"></noscript>', "script", True),
    ("math-style-mxss", '<math><mtext><table><mglyph><style><img src=x onerror="{b}"></style></mglyph></table></mtext></math>', "script", False),
    ("template-script", "<template><script>{b}</script></template>", "script", False),
    ("conditional-comment", "<!--[if gte IE 4]><script>{b}</script><![endif]-->", "script", False),
    ("comment-breakout", "<!-- --!><script>{b}</script> -->", "script", True),
    ("style-expression", '<div style="width: expression({b})">x</div>', "script", False),
    ("style-javascript-url", '<div style="background:url(javascript:{b})">x</div>', "script", False),
    ("style-behavior", '<div style="behavior: url(x.htc); -moz-binding: url(x.xml#xss)">x</div>', "script", False),
    ("style-escaped-url", '<div style="background:u\\72l(' + ATTACKER + '/css-escape/{id})">x</div>', "load", True),
    ("style-block-import", "<style>@import '" + ATTACKER + "/import/{id}';</style>", "load", True),
    ("style-background-url", '<div style="background:url(' + ATTACKER + '/bg/{id})">x</div>', "load", True),
    ("style-background-image", '<div style="background-image: url(&quot;' + ATTACKER + '/bgi/{id}&quot;)">x</div>', "load", True),
    ("link-stylesheet", '<link rel="stylesheet" href="' + ATTACKER + '/css/{id}">', "load", True),
    ("base-href", '<base href="' + ATTACKER + '/base/"><img src="{id}.png">', "load", True),
    ("img-remote", '<img src="' + ATTACKER + '/track/{id}.gif" width="1" height="1">', "load", True),
    ("img-protocol-relative", '<img src="//attacker.example/pr/{id}.gif">', "load", True),
    ("img-srcset", '<img srcset="' + ATTACKER + '/srcset/{id} 1x">', "load", True),
    ("table-background", '<table background="' + ATTACKER + '/tbg/{id}"><tr><td>x</td></tr></table>', "load", True),
    ("video-poster", '<video poster="' + ATTACKER + '/poster/{id}"></video>', "load", True),
    ("svg-image", '<svg><image href="' + ATTACKER + '/svgimg/{id}"></image></svg>', "load", True),
]


def xss_vectors(beacon: str) -> list[Vector]:
    """Return the corpus with every beacon pointing at `beacon` (e.g. "http://127.0.0.1:5000/beacon")."""
    vectors = []
    for vector_id, template, kind, fires in _TEMPLATES:
        statement = f"fetch('{beacon}/{vector_id}')"
        html = template.replace("{b}", statement).replace("{beacon}", beacon).replace("{id}", vector_id)
        vectors.append(Vector(vector_id, html, kind, fires))
    return vectors
