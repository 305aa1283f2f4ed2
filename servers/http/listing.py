"""Directory listings (``--listing``): an HTML index of a directory without ``index.html``.

Names are HTML-escaped in the text and URL-quoted in the links, so a file
called ``<script>`` or ``a"b`` is shown as what it is and links to itself.
"""

from __future__ import annotations

import html
import os
from urllib.parse import quote


def listing_page(directory: str, url_path: str) -> bytes:
    """The listing of *directory*, shown as *url_path* (decoded, ending in ``/``)."""
    entries = []
    with os.scandir(directory) as scan:
        for entry in scan:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            entries.append((entry.name, is_dir))
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
    for name, is_dir in entries:
        suffix = "/" if is_dir else ""
        href = quote(name, errors="surrogateescape") + suffix
        shown = html.escape(name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")) + suffix
        # "./" keeps a name with a colon from reading as a URL scheme.
        lines.append(f'<li><a href="./{href}">{shown}</a></li>')
    lines.append("</ul></body></html>\n")
    return "\n".join(lines).encode("utf-8")
