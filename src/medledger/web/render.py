"""Tiny HTML rendering: one layout, escaped values, tables. No template engine needed."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape

from fastapi.responses import HTMLResponse

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#1d2733;background:#f6f8fa}
header{background:#0b4f6c;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.5rem;align-items:center}
header a{color:#fff;text-decoration:none;font-weight:600}
main{padding:1rem 1.5rem;max-width:1100px}
table{border-collapse:collapse;width:100%;background:#fff;margin:.5rem 0 1.2rem}
th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;font-size:.9rem;vertical-align:top}
th{background:#eef2f5}
.ok{color:#116329}.bad{color:#b42318}.warn{background:#fff4ce;padding:.4rem .6rem;border-left:4px solid #d4a72c}
.muted{color:#57606a}code{font-size:.85rem}
form.inline{display:inline}
input,select,button{font-size:.95rem;margin:.15rem}
button{background:#0b4f6c;color:#fff;border:0;padding:.35rem .8rem;border-radius:4px;cursor:pointer}
.card{background:#fff;border:1px solid #d0d7de;padding:.8rem 1rem;margin:.6rem 0;border-radius:6px}
"""


def e(value: object) -> str:
    return escape("" if value is None else str(value))


def when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], empty: str = "nothing yet") -> str:
    """Rows are already-escaped HTML cells."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="muted">{e(empty)}</p>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_POST_FORM = re.compile(r'(<form\b[^>]*\bmethod="post"[^>]*>)')


def page(title: str, hospital: str, body: str, status: int = 200, csrf: str = "") -> HTMLResponse:
    """The layout around `body`. With `csrf` (the signed-in session's token), every POST form
    of the page carries it in a hidden field, so that no form can forget it."""
    if csrf:
        hidden = f'<input type="hidden" name="csrf" value="{e(csrf)}">'
        body = _POST_FORM.sub(lambda m: m.group(1) + hidden, body)
    html = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{e(title)} — medledger</title><meta name="viewport" content="width=device-width">
<style>{_STYLE}</style></head><body>
<header><a href="/">medledger · {e(hospital)}</a><a href="/portal">Patient portal</a>
<a href="/clinician">Clinician</a><a href="/explorer">Network explorer</a></header>
<main><h1>{e(title)}</h1>{body}</main></body></html>"""
    return HTMLResponse(html, status_code=status)
