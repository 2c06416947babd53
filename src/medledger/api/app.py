"""The FastAPI application one hospital's node serves."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from medledger.api.fhir import make_router
from medledger.api.outcomes import FhirError, fhir_error_handler, fhir_response, outcome
from medledger.api.services import HospitalServices


def create_app(services: HospitalServices) -> FastAPI:
    app = FastAPI(
        title=f"medledger — {services.node.config.name}",
        description="FHIR R4 facade, patient portal API and admin of one hospital's node.",
        version="0.1.0",
    )
    app.state.services = services
    app.add_exception_handler(FhirError, fhir_error_handler)

    async def invalid(request, exc):  # type: ignore[no-untyped-def]
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return fhir_response(outcome("error", "invalid", f"{where}: {first.get('msg', '')}"), 400)

    app.add_exception_handler(RequestValidationError, invalid)

    @app.get("/.well-known/smart-configuration")
    def smart_configuration() -> dict[str, object]:
        return {
            "issuer": services.issuer_id,
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "grant_types_supported": ["client_credentials"],
            "scopes_supported": [
                "patient/*.read",
                "user/*.read",
                "user/*.write",
                "patient/*.rs",
                "user/*.cruds",
                "system/*.rs",
            ],
            "capabilities": [
                "permission-v1",
                "permission-v2",
                "permission-patient",
                "permission-user",
                "client-confidential-asymmetric",
            ],
            "code_challenge_methods_supported": ["S256"],
        }

    app.include_router(make_router())
    from medledger.web.pages import make_router as make_pages

    app.include_router(make_pages())
    return app
