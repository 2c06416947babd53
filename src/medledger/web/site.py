"""A hospital's whole HTTP site: the FHIR API with the server-rendered pages mounted on it.

The API knows nothing of the pages (`api` sits below `web`); this is where the two meet.
"""

from __future__ import annotations

from fastapi import FastAPI

from medledger.api.app import create_app as create_api
from medledger.api.services import HospitalServices
from medledger.web import router as pages


def create_app(services: HospitalServices) -> FastAPI:
    """The API app of `services`, plus the portal, clinician and explorer pages."""
    app = create_api(services)
    app.include_router(pages())
    return app
