"""Server-rendered pages: the patient portal, the clinician view, the network explorer.

The package owns the pages' routes and their HTML (Jinja2 templates in `templates/`, with
`render.py` the only place that renders them). Each module is one router with one public
`router()`: `auth` (sign-in/out, cookie, CSRF and Origin checks), `home`, `portal`,
`clinician` (with its advice rules in `clinician_rules`), `explorer` (`health` is its poll
of the hospitals' `/health`) and `research` (studies, queries, results); `records`
is the timeline both portal and clinician show. Pages read and act through the API's
services, scopes and tokens (`medledger.api`) and the node. `site.create_app` is the
hospital's whole HTTP site: the API with `router()` mounted on it (the API knows nothing of
the pages).

May import: api and everything below it; never exchange, provisioning (its sibling) or cli.
"""

from __future__ import annotations

from fastapi import APIRouter


def router() -> APIRouter:
    """Every page route, as `api/app.py` mounts them."""
    from medledger.web import auth, clinician, explorer, home, portal, research

    pages = APIRouter()
    for module in (home, auth, portal, clinician, explorer, research):
        pages.include_router(module.router())
    return pages
