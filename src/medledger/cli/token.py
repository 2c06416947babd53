"""`medledger token`: the built-in token issuer, for demos and tests; and `medledger token
client`: the hospital's SMART backend-service clients, who get tokens from `POST /auth/token`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from medledger.cli._common import HomeOption, console, fail, user_errors


def register(app: typer.Typer) -> None:
    token = typer.Typer(help="Bearer tokens: mint one, or register the systems that ask for them.")
    app.add_typer(token, name="token")

    @token.callback(invoke_without_command=True)
    def mint_token(
        ctx: typer.Context,
        home: Annotated[
            Path | None,
            typer.Option("--home", "-H", help="The hospital's home folder."),
        ] = None,
        user: Annotated[
            str | None,
            typer.Option(help="Practitioner/<id>, Patient/<INS or pid>, or system."),
        ] = None,
        scopes: Annotated[str | None, typer.Option(help='SMART scopes, e.g. "user/*.rs".')] = None,
        hours: Annotated[int, typer.Option(help="Lifetime.")] = 8,
    ) -> None:
        """Mint a bearer token (EdDSA JWT) signed by the hospital's built-in issuer."""
        if ctx.invoked_subcommand is not None:
            return
        if home is None or user is None or scopes is None:
            fail("medledger token --home H --user WHO --scopes S (or: medledger token client)")
        _mint(home, user, scopes, hours)

    client = typer.Typer(
        help="SMART backend services: systems that get tokens with a signed assertion.",
        no_args_is_help=True,
    )
    token.add_typer(client, name="client")

    @client.command("add")
    def add(
        home: HomeOption,
        client_id: Annotated[str, typer.Option("--id", help="The client id (iss of its JWTs).")],
        jwks: Annotated[Path, typer.Option(help="Its public key(s): a JWKS JSON file.")],
        scope: Annotated[
            str, typer.Option(help='The system/ scopes it may get, e.g. "system/*.rs".')
        ],
    ) -> None:
        """Register (or replace) a backend client and the keys it signs its assertions with."""
        import orjson

        from medledger.api.smart import ClientError, add_client
        from medledger.node.config import load_config

        with user_errors():
            config = load_config(home)
            try:
                keys = orjson.loads(jwks.read_bytes())
                entry = add_client(config.home, client_id, keys, scope)
            except orjson.JSONDecodeError as exc:
                fail(f"{jwks}: not JSON ({exc})")
            except ClientError as exc:
                fail(f"{jwks}: {exc}")
            kids = ", ".join(k["kid"] for k in entry["jwks"]["keys"])
            console.print(
                f"client {client_id} of {config.org}: scopes {entry['scope']}; keys {kids}"
            )

    @client.command("list")
    def list_clients(home: HomeOption) -> None:
        """The registered backend clients, their scopes and key ids."""
        from medledger.api.smart import load_clients
        from medledger.node.config import load_config

        with user_errors():
            config = load_config(home)
            for client_id, entry in sorted(load_clients(config.home).items()):
                kids = ", ".join(k.get("kid", "?") for k in entry["jwks"]["keys"])
                console.print(f"{client_id}\t{entry['scope']}\t{kids}")


def _mint(home: Path, user: str, scopes: str, hours: int) -> None:
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
