"""`medledger member propose|vote|list`: consortium membership, decided at two thirds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from medledger.cli import _common
from medledger.cli._common import HomeOption, console, hex32, send, user_errors
from medledger.contracts import queries
from medledger.contracts.governance import (
    DEFAULT_PARAMS,
    PARAM_ORDER_V4,
    Propose,
    UpdateMember,
    Vote,
    param_bounds,
    param_conflict,
)

if TYPE_CHECKING:
    from medledger.consensus.engine import Committed
    from medledger.node import Node
    from medledger.provisioning import JoinRequest


def _report(node: Node, committed: Committed) -> None:
    for event in committed.result.events:
        if event.type == "proposal.created":
            console.print(f"proposal {event.get('id')} created ({event.get('action')})")
        elif event.type == "proposal.voted":
            verdict = "for" if event.get("approve") == "1" else "against"
            console.print(f"{event.get('org')} voted {verdict} proposal {event.get('id')}")
        elif event.type == "proposal.executed":
            console.print(f"[green]proposal {event.get('id')} reached 2/3 and was executed[/]")
        elif event.type == "contract.activated":
            console.print(f"contract {event.get('name')} version {event.get('version')} active")
        elif event.type == "param.set":
            console.print(f"{event.get('name')} is now {event.get('value')}")
        elif event.type == "proposal.rejected":
            console.print(f"[red]proposal {event.get('id')} was rejected[/]")
        elif event.type == "member.admitted":
            console.print(f"{event.get('org')} is now a member")
        elif event.type == "member.removed":
            console.print(f"{event.get('org')} is no longer a member")
        elif event.type == "member.rebound":
            console.print(f"{event.get('org')} is now bound to its new keys")
        elif event.type == "member.updated":
            console.print(f"{event.get('org')} updated its {event.get('changed')}")


def check_param(
    name: str, value: int, version: int = 3, current: dict[str, int] | None = None
) -> None:
    """A parameter change the contract (`version` of governance) would refuse, refused here
    first (ValueError): both ask `param_bounds`, and `param_conflict` with the parameters in
    force (`current`)."""
    try:
        low, high = param_bounds(name, version)
    except KeyError:
        known = ", ".join(sorted(DEFAULT_PARAMS))
        raise ValueError(f"--name: unknown parameter {name!r} (known: {known})") from None
    if value < low or (high is not None and value > high):
        allowed = f"{low} to {high}" if high is not None else f"at least {low}"
        raise ValueError(f"--value: {value} is out of range for {name} ({allowed})")
    conflict = param_conflict(name, value, current or {}, version)
    if conflict:
        raise ValueError(f"--value: {conflict}")


def _governance_version(node: Node) -> int:
    """The version of the governance contract this chain runs (its parameters' ranges)."""
    return int(queries.contract_versions(node.engine).get("governance", 1))


def _read_request(path: Path) -> JoinRequest:
    from medledger.provisioning import JoinRequest

    return JoinRequest.from_json(path.read_text(), str(path))


def propose_rebind(home: Path, org: str, request: Path, note: str) -> None:
    """Propose binding `org` to the keys of `request` (`rebind_member`), and say how the
    others vote: `member propose rebind` and `recover propose` are this one act."""
    from medledger.node import Node

    with user_errors():
        joining = _read_request(request)
        if joining.org != org:
            raise ValueError(f"--request: made for {joining.org!r}, not {org!r}")
        with Node.open(home) as node:
            committed = send(
                node, node.wallet, Propose("rebind_member", joining.member_args(), note)
            )
            _report(node, committed)
    if not _common.event(committed, "proposal.executed"):
        created = _common.event(committed, "proposal.created")
        console.print(
            f"the other members vote: medledger member vote {created.get('id')} --home ..."
        )


def register(app: typer.Typer) -> None:
    member = typer.Typer(help="Consortium membership: propose, vote, list.", no_args_is_help=True)
    app.add_typer(member, name="member")
    propose = typer.Typer(help="Propose a change to the consortium.", no_args_is_help=True)
    member.add_typer(propose, name="propose")

    @propose.command("admit")
    def admit(
        home: HomeOption,
        request: Annotated[
            Path | None, typer.Option(help="The hospital's join-request.json (from keygen).")
        ] = None,
        org: Annotated[str, typer.Option(help="The new hospital's id.")] = "",
        name: Annotated[str, typer.Option(help="Its name.")] = "",
        key: Annotated[str, typer.Option(help="Its organisation public key, hex.")] = "",
        validator_key: Annotated[str, typer.Option(help="Its consensus key, hex.")] = "",
        box_key: Annotated[str, typer.Option(help="Its X25519 key for sealed metadata keys.")] = "",
        power: Annotated[int, typer.Option(help="Validator voting power.")] = 0,
        note: Annotated[str, typer.Option(help="Why, for the other members.")] = "",
    ) -> None:
        """Propose admitting a hospital, from its join request (--request) or key by key.

        With --power it validates (its request's validator key, or --validator-key)."""
        from medledger.node import Node

        with user_errors():
            args: dict[str, object]
            if request is not None:
                if org or key:
                    raise ValueError("--request: give the request alone, not --org/--key too")
                joining = _read_request(request)
                args = {**joining.member_args(), "name": joining.name, "power": power}
            else:
                if not (org and name and key):
                    raise ValueError("--request, or --org, --name and --key")
                args = {"org": org, "name": name, "key": hex32(key, "--key")}
                if box_key:
                    args["box_key"] = hex32(box_key, "--box-key")
                if validator_key:
                    args["validator_key"] = hex32(validator_key, "--validator-key")
                    args["power"] = power
            with Node.open(home) as node:
                c = send(node, node.wallet, Propose("admit_member", args, note))
                _report(node, c)

    @propose.command("rebind")
    def rebind(
        home: HomeOption,
        org: Annotated[str, typer.Option(help="The member that lost its keys.")],
        request: Annotated[
            Path, typer.Option(help="Its new join-request.json (keygen in a fresh home).")
        ],
        note: Annotated[str, typer.Option(help="Why, for the other members.")] = "",
    ) -> None:
        """Propose binding a member's org id to new keys after it lost its own (2/3 vote of
        the others); its records, practitioners and custody stay."""
        propose_rebind(home, org, request, note)

    @propose.command("remove")
    def remove(
        home: HomeOption,
        org: Annotated[str, typer.Option(help="The member to remove.")],
        note: Annotated[str, typer.Option()] = "",
    ) -> None:
        """Propose removing a member hospital."""
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            c = send(node, node.wallet, Propose("remove_member", {"org": org}, note))
            _report(node, c)

    @propose.command("activate")
    def activate(
        home: HomeOption,
        contract: Annotated[str, typer.Option(help="The contract, e.g. consent.")],
        version: Annotated[int, typer.Option(help="The version to make active.")],
        note: Annotated[str, typer.Option(help="Why, for the other members.")] = "",
    ) -> None:
        """Propose activating a contract version (every node must run software that has it
        before the vote reaches 2/3: see docs/deploy.md, Upgrades)."""
        from medledger.node import Node

        args = {"name": contract, "version": version}
        with user_errors(), Node.open(home) as node:
            c = send(node, node.wallet, Propose("activate_contract", args, note))
            _report(node, c)

    @propose.command("power")
    def power(
        home: HomeOption,
        org: Annotated[str, typer.Option()],
        power: Annotated[int, typer.Option(help="New voting power (0 stops it validating).")],
    ) -> None:
        """Propose changing a member's validator power."""
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            c = send(node, node.wallet, Propose("set_power", {"org": org, "power": power}))
            _report(node, c)

    @propose.command("param")
    def param(
        home: HomeOption,
        name: Annotated[
            str, typer.Option(help="e.g. study_min_cell (`member params` lists them).")
        ],
        value: Annotated[int, typer.Option(help="The new value (an integer).")],
        note: Annotated[str, typer.Option(help="Why, for the other members.")] = "",
    ) -> None:
        """Propose changing a consortium parameter (`set_param`): study queries' k, DPO
        approval, answer time, epsilon floor and budget cap, replicas, custody..."""
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            current = queries.governance_params(node.engine)
            check_param(name, value, _governance_version(node), current)
            args = {"name": name, "value": value}
            c = send(node, node.wallet, Propose("set_param", args, note))
            _report(node, c)

    @member.command("params")
    def params(home: HomeOption) -> None:
        """The consortium parameters in force, with the values a vote may give them."""
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            found = queries.governance_params(node.engine)
            version = _governance_version(node)
        table = Table("parameter", "value", "allowed")
        for name, current in sorted(found.items()):
            low, high = param_bounds(name, version)
            table.add_row(name, str(current), f"{low}.." + ("" if high is None else str(high)))
        console.print(table)
        if version >= 4:
            for lower, upper in PARAM_ORDER_V4:
                console.print(f"and {lower} at most {upper}")

    @member.command("update")
    def update(
        home: HomeOption,
        rotate: Annotated[
            list[str] | None,
            typer.Option(
                help="A key to replace: signing, tls, box, validator or p2p (repeatable)."
            ),
        ] = None,
        address: Annotated[
            list[str] | None,
            typer.Option(help="kind=host:port to publish (gateway, api, p2p, rpc; repeatable)."),
        ] = None,
    ) -> None:
        """Rotate this hospital's own keys or change its addresses on the chain.

        New keys are made beside the live ones and switched in only once the update is
        committed; re-run after a crash or a "pending" answer to finish."""
        from medledger.node import Node
        from medledger.node.config import ConfigError
        from medledger.node.wallet import TxRejected
        from medledger.provisioning import parse_addresses, rotation

        with user_errors(), Node.open(home) as node:
            config = node.config
            pending = rotation.staged_kinds(config.home)
            if pending and (set(rotate or []) - set(pending) or address):
                raise ValueError(
                    f"a rotation of {', '.join(pending)} is pending in "
                    f"{config.home / rotation.NEXT}: first finish it with "
                    "`medledger member update` alone"
                )
            kinds = pending or list(rotate or [])
            if not kinds and not address:
                raise ValueError("nothing to update: give --rotate and/or --address")
            mine = next(m for m in queries.members(node.engine) if m["org"] == config.org)
            staged = rotation.stage(config, kinds, node.org_key.public_key)
            if not (staged.kinds and staged.on_chain(mine)):  # else: committed, not switched
                body: dict[str, object] = dict(staged.body)
                if address or "p2p" in staged.kinds:
                    current = {**mine.get("addresses", {}), **parse_addresses(address or [])}
                    try:
                        body["addresses"] = staged.addresses(current)
                    except ConfigError:
                        rotation.discard(config)  # nothing was sent: the staged keys go
                        raise
                try:
                    c = send(node, node.wallet, UpdateMember(**body))  # type: ignore[arg-type]
                except TxRejected:
                    rotation.discard(config)  # refused: the staged keys were never bound
                    raise
                _report(node, c)
            for path in rotation.switch(config, staged) if staged.kinds else []:
                console.print(f"switched to the new key in {path}")
            if set(staged.kinds) & {"signing", "box", "validator", "p2p"}:
                console.print("restart the node so that it uses its new keys")

    @member.command("vote")
    def vote(
        home: HomeOption,
        proposal: Annotated[int, typer.Argument(help="Proposal number.")],
        reject: Annotated[bool, typer.Option("--reject", help="Vote against.")] = False,
    ) -> None:
        """Vote on an open proposal (for, unless --reject)."""
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            c = send(node, node.wallet, Vote(proposal=proposal, approve=not reject))
            _report(node, c)

    @member.command("list")
    def list_(home: HomeOption) -> None:
        """Members, and proposals still open."""
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            members = queries.members(node.engine)
            proposals = queries.proposals(node.engine, "open")
        table = Table("hospital", "name", "validator power", "key")
        for m in members:
            table.add_row(m["org"], m["name"], str(m["power"]), m["key"].hex()[:16])
        console.print(table)
        if proposals:
            pt = Table("proposal", "action", "args", "by", "votes for/against")
            for p in proposals:
                yes = sum(1 for v in p["votes"].values() if v)
                no = len(p["votes"]) - yes
                args = ", ".join(
                    f"{k}={v.hex()[:12] if isinstance(v, bytes) else v}"
                    for k, v in sorted(p["args"].items())
                )
                pt.add_row(str(p["id"]), p["action"], args, p["proposer"], f"{yes}/{no}")
            console.print(pt)
        else:
            console.print("no open proposal")
