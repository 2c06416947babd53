"""Rendering: the Jinja2 templates of `web/templates/`, and the few helpers they use.

Route functions compute plain data (lists of dicts) and call `render`; the templates own the
markup. Autoescape is on for every `.html` template, so a value from the chain or a form
(an actor, a study id, a reason) can never become markup; the few bits of HTML are written
in the templates themselves, never passed in as strings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.templating import Jinja2Templates


def when(ms: int) -> str:
    """A chain time (milliseconds since the epoch) as people read it, in UTC."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


_ENV = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    finalize=lambda value: "" if value is None else value,  # a missing value shows nothing
)
_ENV.filters["when"] = when
_MONTHS = {
    "en": "January February March April May June July August September October November December",
    "fr": "janvier février mars avril mai juin juillet août septembre octobre novembre décembre",
}


def day_in_words(iso: str, lang: str = "en") -> str:
    """`2026-03-03` → "3 March 2026" (or "3 mars 2026"); anything else as it is."""
    try:
        year, month, day = int(iso[:4]), int(iso[5:7]), int(iso[8:10])
        name = _MONTHS.get(lang, _MONTHS["en"]).split()[month - 1]
    except (ValueError, IndexError):
        return iso
    return f"{day} {name} {year}"


_ENV.filters["day"] = day_in_words
_ENV.globals["_"] = lambda text, **values: text.format(**values) if values else text
_ENV.globals["lang"] = "en"
templates = Jinja2Templates(env=_ENV)


def render(
    request: Request,
    name: str,
    title: str,
    status: int = 200,
    csrf: str = "",
    **context: Any,
) -> HTMLResponse:
    """The template `name` inside the layout. `csrf` is the signed-in session's token: every
    POST form writes it in a hidden field (macro `csrf_field` in `macros.html`)."""
    from medledger.web.i18n import language, translator

    hospital = request.app.state.services.node.config.name
    lang = language(request)
    _ = translator(lang)
    return templates.TemplateResponse(
        request,
        name,
        {"title": _(title), "hospital": hospital, "csrf": csrf, "lang": lang, "_": _, **context},
        status_code=status,
    )


def message(
    request: Request, title: str, text: str, status: int = 200, cls: str = "", back: str = ""
) -> HTMLResponse:
    """A page that says one thing (a refusal, a result), with an optional link back."""
    return render(request, "message.html", title, status, text=text, cls=cls, back=back)
