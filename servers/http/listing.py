"""Directory listings (``--listing``): an HTML index of a directory without ``index.html``.

Names are HTML-escaped in the text and URL-quoted in the links, so a file
called ``<script>`` or ``a"b`` is shown as what it is and links to itself.
An entry is named only when *shown* accepts its link: the site asks the
same question a request for it would (hidden names, refused links, special
files), so a listing never tells of what the server refuses to serve.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable
from urllib.parse import quote


def _everything(href: str) -> bool:
    return True


def listing_page(directory: str, url_path: str, shown: Callable[[str], bool] = _everything) -> bytes:
    """The listing of *directory*, shown as *url_path* (decoded, ending in ``/``).

    *shown* is given each entry's link (URL-quoted, relative, ``/`` after a
    directory) and says whether to name it.
    """
    entries = []
    with os.scandir(directory) as scan:
        for entry in scan:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            href = quote(entry.name, errors="surrogateescape") + ("/" if is_dir else "")
            if shown(href):
                entries.append((entry.name, is_dir, href))
    entries.sort()
    title = html.escape(url_path)
    lines = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>Index of {title}</title></head>",
        f"<body><h1>Index of {title}</h1><ul>",
    ]
    if url_path != "/":
        lines.append('<li><a href="../">../</a></li>')
    for name, is_dir, href in entries:
        suffix = "/" if is_dir else ""
        text = html.escape(name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")) + suffix
        # "./" keeps a name with a colon from reading as a URL scheme.
        lines.append(f'<li><a href="./{href}">{text}</a></li>')
    lines.append("</ul></body></html>\n")
    return "\n".join(lines).encode("utf-8")
