"""`medledger token`: the built-in token issuer, for demos and tests."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from medledger.cli._common import HomeOption, console, fail, user_errors


def register(app: typer.Typer) -> None:
    @app.command("token")
    def token(
        home: HomeOption,
        user: Annotated[
            str,
            typer.Option(help="Practitioner/<id>, Patient/<INS or pid>, or system."),
        ],
        scopes: Annotated[str, typer.Option(help='SMART scopes, e.g. "user/*.rs".')],
        hours: Annotated[int, typer.Option(help="Lifetime.")] = 8,
    ) -> None:
        """Mint a bearer token (EdDSA JWT) signed by the hospital's built-in issuer."""
        from medledger.api.services import issuer_key
        from medledger.api.tokens import mint
        from medledger.node.config import load_config
        from medledger.node.patients import resolve_pid

        with user_errors():
            config = load_config(home)
            claims: dict[str, object] = {"scope": scopes}
            kind, _, ident = user.partition("/")
            if kind == "Practitioner":
                if not config.practitioner_key_path(ident).exists():
                    fail(f"{ident!r} is not a practitioner of {config.org} (no key)")
                claims["sub"] = user
            elif kind == "Patient":
                pid = resolve_pid(config.pseudonym_key(), ident)
                claims["sub"] = f"Patient/{pid}"
                claims["patient"] = pid
            elif user == "system":
                claims["sub"] = f"Device/{config.org}-system"
            else:
                fail("--user: Practitioner/<id>, Patient/<INS or pid>, or system")
            now = int(time.time())
            claims.update(
                iss=f"urn:medledger:{config.org}:issuer",
                aud=f"urn:medledger:{config.org}:fhir",
                iat=now,
                nbf=now,
                exp=now + hours * 3600,
            )
            console.print(mint(issuer_key(config.home), claims), soft_wrap=True)
