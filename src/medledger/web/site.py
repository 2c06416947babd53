"""A hospital's whole HTTP site: the FHIR API with the server-rendered pages mounted on it.

The API knows nothing of the pages (`api` sits below `web`); this is where the two meet. A
page that cannot be served for a while (the node's CometBFT gone, the audit journal unable
to record the access) answers an HTML page with the reason and status 503, not JSON.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.responses import Response

from medledger.api.app import create_app as create_api
from medledger.api.outcomes import API_PREFIXES, FhirError, fhir_error_handler
from medledger.api.services import HospitalServices
from medledger.web import router as pages

UNAVAILABLE_TITLE = "Service unavailable"


def unavailable_page(request: Request, reason: str) -> Response:
    """The page every page path answers while it cannot be served (status 503)."""
    from medledger.web.render import message

    return message(request, UNAVAILABLE_TITLE, reason, 503, cls="error")


async def _page_or_outcome(request: Request, exc: Exception) -> Response:
    """A 503 on a page's path as a page; everything else as the API answers it."""
    assert isinstance(exc, FhirError)
    if exc.status == 503 and not request.url.path.startswith(API_PREFIXES):
        response = unavailable_page(request, exc.diagnostics)
        response.headers.update(exc.headers)
        return response
    return await fhir_error_handler(request, exc)


def create_app(services: HospitalServices) -> FastAPI:
    """The API app of `services`, plus the portal, clinician and explorer pages."""
    app = create_api(services, unavailable_page=unavailable_page)
    app.add_exception_handler(FhirError, _page_or_outcome)
    app.include_router(pages())
    return app
