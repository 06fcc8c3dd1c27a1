"""MkDocs hook: in the API reference, a name written as code (`nemon.fit`, `Classifier`,
`nemon.ranges`) links to where the page documents it, so docstrings cross-reference each other
without markup of their own. Names the page does not document, code already in a link and the
headings stay as they are."""

from __future__ import annotations

import re

CODE = re.compile(r"(<a [^>]*>)?<code>([A-Za-z_][\w.]*)</code>")
HEADING = re.compile(r"(<h[1-6][^>]*>.*?</h[1-6]>)", re.S)


def on_page_content(html: str, page, **_) -> str:
    if page.file.src_uri != "api.md":
        return html
    anchors = set(re.findall(r'id="(nemon[\w.]*)"', html))

    def link(match: re.Match) -> str:
        if match.group(1):  # already a link
            return match.group(0)
        name = match.group(2)
        for target in (name, f"nemon.{name}"):
            if target in anchors:
                return f'<a href="#{target}"><code>{name}</code></a>'
        return match.group(0)

    parts = HEADING.split(html)
    return "".join(p if HEADING.fullmatch(p) else CODE.sub(link, p) for p in parts)
