"""`medledger study query submit|approve|run|result|list`: federated study queries.

A researcher of the sponsor submits a query document (JSON, `docs/architecture.md`,
"Federated study queries"); it is checked here first, with the contract's own parser, so a bad
document is refused before anything is signed, naming the field. The sponsor's DPO approves
for the ethics committee (the decision document's hash), each member's DPO as a custodian;
then every hospital's node answers by itself (`medledger.research`), or `run` answers now for
this hospital. `result` shows the status, who contributed what, and the result's tables
(suppressed figures say so, never 0); `--crate DIR` packages it as an RO-Crate.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table as RichTable

from medledger.cli._common import AsOption, HomeOption, console, fail, file_hash, iso, user_errors
from medledger.contracts import queries

if TYPE_CHECKING:
    from medledger.consensus.engine import Committed
    from medledger.node import Node

QueryArg = Annotated[str, typer.Argument(help="The query's id, e.g. s-2026-01/q0001.")]


def message(kind: str, **fields: Any) -> Any:
    """The contract's message dataclass of `kind` that has these fields (the version that
    declares them: `research.register`'s budget is v2's)."""
    import dataclasses

    from medledger.contracts import all_contracts

    for contract in sorted(all_contracts(), key=lambda c: -c.version):
        declared = contract.messages.get(kind)
        names = {f.name for f in dataclasses.fields(declared.cls)} if declared else set()
        if declared is not None and set(fields) <= names:
            return declared.cls(**fields)
    fail(f"this version of medledger has no {kind} message with {', '.join(sorted(fields))}")


def read_document(path: Path) -> dict[str, Any]:
    """The query document of a JSON file, checked and in canonical form (floats become
    decimal texts: the chain takes no float); errors name the file and the field."""
    from medledger.contracts import study_query
    from medledger.ledger.errors import TxError

    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        fail(f"{path}: not found")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        fail(f"{path}: not JSON ({exc})")
    if not isinstance(doc, dict):
        fail(f"{path}: a query document is a JSON object")
    try:
        return study_query.to_obj(study_query.parse(doc))
    except TxError as exc:
        fail(f"{path}: {exc.message}")


def _send(node: Node, as_: str, msg: Any) -> Committed:
    from medledger.cli._common import send, signer

    return send(node, signer(node, as_), msg)


def _event(committed: Committed, kind: str) -> dict[str, Any]:
    return next((dict(e.attrs) for e in committed.result.events if e.type == kind), {})


def _record(node: Node, query_id: str) -> dict[str, Any]:
    found: dict[str, Any] | None = node.engine.query("research/query", {"query": query_id})
    if found is None:
        fail(f"no study query {query_id!r} on the chain")
    return found


def register_queries(study: typer.Typer) -> None:
    """Add `study query ...` under `study`."""
    commands = typer.Typer(help="Federated study queries: submit, approve, run, result.")
    study.add_typer(commands, name="query", no_args_is_help=True)

    @commands.command("submit")
    def submit(
        home: HomeOption,
        study_id: Annotated[str, typer.Option("--id", help="The study's id.")],
        file: Annotated[Path, typer.Option("--file", help="The query document (JSON).")],
        as_: AsOption = "",
    ) -> None:
        """Submit a query under an open study of your hospital (a researcher)."""
        from medledger.contracts import study_query
        from medledger.node import Node

        doc = read_document(file)
        with user_errors(), Node.open(home) as node:
            c = _send(node, as_, message("research.query_submit", study=study_id, query=doc))
        query_id = _event(c, "study.query_submitted").get("query", "?")
        digest = study_query.query_hash(study_query.parse(doc)).hex()
        console.print(
            f"query {query_id} submitted under {study_id} (block {c.height}); hash "
            f"{digest[:16]}; it runs once the sponsor's DPO (ethics) and, if the consortium "
            "asks it, every member's DPO approve it"
        )

    @commands.command("approve")
    def approve(
        home: HomeOption,
        query_id: QueryArg,
        as_ethics: Annotated[
            bool, typer.Option("--as-ethics", help="The sponsor's DPO, for the ethics committee.")
        ] = False,
        as_custodian: Annotated[
            bool, typer.Option("--as-custodian", help="Your hospital's DPO, as a custodian.")
        ] = False,
        decision: Annotated[
            Path | None,
            typer.Option(help="The ethics committee's decision document (only its hash)."),
        ] = None,
        as_: Annotated[
            str,
            typer.Option(
                "--as",
                help="The DPO of your hospital who approves (required: an organisation key "
                "approves nothing).",
            ),
        ] = "",
    ) -> None:
        """Approve a query: --as-ethics --decision FILE, or --as-custodian (a DPO signs)."""
        from medledger.node import Node

        if as_ethics == as_custodian:
            fail("give one of --as-ethics (with --decision) or --as-custodian")
        if as_ethics and decision is None:
            fail("--as-ethics: --decision names the ethics committee's decision document")
        if not as_:
            fail("--as names the DPO who approves: an organisation key approves nothing")
        with user_errors(), Node.open(home) as node:
            record = _record(node, query_id)
            fields: dict[str, Any] = {
                "query": query_id,
                "role": "ethics" if as_ethics else "custodian",
            }
            if decision is not None:
                fields["decision_hash"] = file_hash(decision)
            if as_ethics:
                study = queries.study(node.engine, str(record["study"]))
                fields["ethics_ref"] = "" if study is None else study["ethics_ref"]
            c = _send(node, as_, message("research.query_approve", **fields))
            after = _record(node, query_id)
        console.print(
            f"query {query_id} approved as {fields['role']} by {node.config.org} "
            f"(block {c.height}); now {after['status']}"
        )

    @commands.command("run")
    def run(
        home: HomeOption,
        query_id: QueryArg,
        wait: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 120.0,
    ) -> None:
        """Answer a running query for your hospital now (its node's agent does it by itself)."""
        from medledger.interop import study_results
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            record = _record(node, query_id)
            org = node.config.org
            done = [a for a in study_results.answers(record) if a.org == org]
            if done:
                console.print(f"{org} answered {query_id} for {done[0].patients} enrolled patients")
                return
            if record["status"] != "running":
                fail(f"query {query_id} is {record['status']}, not running")
            if org not in (record.get("answerers") or []):
                fail(f"{org} is not among the answerers of {query_id}")
            patients = _answer_now(node, query_id, wait)
        console.print(f"{org} answered {query_id} for {patients} enrolled patients")

    @commands.command("result")
    def result(
        home: HomeOption,
        query_id: QueryArg,
        as_json: Annotated[bool, typer.Option("--json", help="The record as JSON.")] = False,
        crate: Annotated[
            Path | None, typer.Option("--crate", help="Package the result as an RO-Crate here.")
        ] = None,
    ) -> None:
        """A query's status, approvals, contributors and result tables."""
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            record = _record(node, query_id)
            if crate is not None:
                _write_crate(node, record, crate)
        if as_json:
            console.print_json(json.dumps(_jsonable(record)))
        else:
            show(record)
        if crate is not None:
            console.print(f"crate written to {crate} (check it: medledger study crate verify)")

    @commands.command("list")
    def list_(
        home: HomeOption,
        study_id: Annotated[str, typer.Option("--id", help="The study's id.")],
    ) -> None:
        """The queries of a study, with their status."""
        from medledger.node import Node

        with user_errors(), Node.open(home) as node:
            found = queries.study_queries(node.engine, study_id)
        if not found:
            console.print(f"no query under {study_id}")
        for record in found:
            console.print(f"{record['id']}: {record['status']}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _cell(text: str) -> str:
    """A table cell as printed: suppressed dim, clamped yellow (neither reads as data)."""
    from medledger.interop import study_results

    if text == study_results.SUPPRESSED:
        return f"[dim]{text}[/]"
    if text.endswith(study_results.CLAMPED):
        return f"[yellow]{text}[/]"
    return text


def show(record: dict[str, Any]) -> None:
    """The record as tables: status and contributors, then the result's tables."""
    from medledger.interop import study_results

    console.print(f"[bold]query {record['id']}[/] of study {record['study']}: {record['status']}")
    console.print(f"  hash {bytes(record['hash']).hex()}")
    if record.get("deadline_ms"):
        console.print(f"  answers due by {iso(int(record['deadline_ms']))}")
    for approval in study_results.approvals(record):
        by = f" ({approval.by})" if approval.by else ""
        console.print(f"  approved as {approval.role} by {approval.org}{by}")
    if record.get("awaited"):
        console.print(f"  [yellow]awaiting approval:[/] {', '.join(record['awaited'])}")
    answered = {a.org: a for a in study_results.answers(record)}
    if record.get("answerers"):
        table = RichTable("hospital", "answered for", "answer tx", title="Contributors")
        for org in record["answerers"]:
            a = answered.get(org)
            table.add_row(
                org,
                f"{a.patients} patients" if a else "[yellow]no answer yet[/]",
                a.tx.hex()[:16] if a else "",
            )
        console.print(table)
    if record.get("missing"):
        console.print(f"  [red]incomplete:[/] no answer from {', '.join(record['missing'])}")
    uncounted = study_results.uncounted(record)
    if uncounted:
        console.print(f"  [yellow]{uncounted}[/]")
    result = record.get("result")
    if result is None:
        return
    console.print(
        f"  k = {result.get('k')}, epsilon {result.get('epsilon')}, noise {result.get('noise')}"
    )
    caveat = study_results.caveat(result)
    if caveat:
        console.print(f"  [yellow]{caveat}[/]")
    bounded = study_results.clamped(record["doc"], result)
    if bounded:
        many = len(bounded) > 1
        console.print(
            f"  [yellow]{len(bounded)} figure{'s' if many else ''} clamped: noise carried "
            f"{'them' if many else 'it'} outside what the data can give; "
            f"{'each is' if many else 'it is'} shown at the bound, marked "
            f'{study_results.CLAMPED}, not a measured value (the table "Figures clamped")[/]'
        )
    for t in study_results.tables(record["doc"], result):
        table = RichTable(*t.columns, title=t.title)
        for row in t.rows:
            table.add_row(*(_cell(c) for c in row))
        console.print(table)
    for reason in result.get("suppressed") or []:
        console.print(f"  suppressed: {reason}")


def _answer_now(node: Node, query_id: str, wait: float) -> int:
    """This hospital's answer: already on the chain; or, when its node runs (its `/health`
    answers), the node's study agent answers and this waits for it on the chain; or it is
    computed here, now, by the same engine (`research.answer.Answerer`)."""
    from medledger.interop import study_results

    def mine() -> list[study_results.Answer]:
        found = study_results.answers(_record(node, query_id))
        return [a for a in found if a.org == node.config.org]

    if not mine():
        if _node_serves(node):
            deadline = time.monotonic() + wait
            while not mine() and time.monotonic() < deadline:
                time.sleep(0.5)
            if not mine():
                fail(
                    f"{node.config.org}'s running node has not answered {query_id} in {wait:.0f} s "
                    "(it waits for the other hospitals' partials: see its log and /health)"
                )
        else:
            _answer_here(node, query_id, wait)
    answered = mine()
    if not answered:
        fail(f"{node.config.org} has no answer to {query_id} on the chain")
    return answered[0].patients


def _node_serves(node: Node) -> bool:
    """Whether this hospital's node runs (its API answers /health as this org)."""
    import httpx

    host, port = node.config.api.address
    try:
        answer = httpx.get(f"http://{host}:{port}/health", timeout=2.0)
        return bool(answer.json().get("org") == node.config.org)
    except (httpx.HTTPError, ValueError, AttributeError):
        return False


def _answer_here(node: Node, query_id: str, wait: float) -> None:
    """The answer computed in this process: the partials the other hospitals sent are in the
    home's inbox (the gateway keeps them there when the node runs); those this hospital owes
    go out through the exchange. Sends and waits stop after `wait` seconds."""
    from medledger.consensus.engine import NoLocalReplica
    from medledger.exchange.client import Directory, ExchangeClient
    from medledger.node.study_partials import Inbox
    from medledger.research.answer import Answerer, NotAnswered, Plan, Warm
    from medledger.vault import Vault

    until_ms = int((time.time() + wait) * 1000)

    class Now(Answerer):
        def plan(self, query_id: str, early: Warm | None = None) -> Plan | None:
            found = super().plan(query_id, early)
            if found is not None:
                found.deadline_ms = min(found.deadline_ms, until_ms)
            return found

    inbox = Inbox(node.config.home / "research" / "partials.db", node.config.box_key())
    directory = Directory(node.config.exchange.peers, lambda: queries.members(node.engine))
    try:
        with Vault.open(node.config.vault_config()) as vault:
            client = ExchangeClient(node, directory=directory)
            Now(node, vault, inbox, client.study_partials, client.warm).answer(
                query_id, max_wait=wait
            )
    except NotAnswered as exc:
        fail(
            f"{exc}: the hospitals exchange partial facts through their gateways "
            "(start the node here, `medledger node run`, and it answers by itself)"
        )
    except NoLocalReplica:
        fail(
            "this home reaches its ledger over RPC (CometBFT) and its node is not serving: "
            "start it (`medledger node run`); its study agent answers by itself"
        )
    finally:
        inbox.close()


def _write_crate(node: Node, record: dict[str, Any], crate: Path) -> None:
    """The result and its chain references as an RO-Crate (a done query only)."""
    from medledger.interop import crate as crates
    from medledger.interop import study_results

    if record.get("result") is None:
        fail(f"--crate: query {record['id']} has no result yet ({record['status']})")
    if crate.exists() and any(crate.iterdir()):
        fail(f"--crate: {crate} is not empty; a crate is written into a new directory")

    def act(kind: str, tx: bytes, agent: str, action: str, **extra: Any) -> crates.ChainAct:
        location = queries.tx_location(node.engine, tx)
        if location is None:
            fail(f"--crate: tx {tx.hex()[:16]} of {record['id']} is not on this chain")
        return crates.ChainAct(kind, tx, int(location["height"]), agent, action, extra)

    acts = [act("research.query_submit", bytes(record["tx"]), record["sponsor"], "CreateAction")]
    acts += [
        act("research.query_approve", a.tx, a.org, "AssessAction", approvalRole=a.role)
        for a in study_results.approvals(record)
    ]
    answers = study_results.answers(record)
    located = {a.tx: queries.tx_location(node.engine, a.tx) or {} for a in answers}
    last = max(
        answers, key=lambda a: (located[a.tx].get("height", 0), located[a.tx].get("index", 0))
    )
    acts += [
        act(
            "research.query_answer",
            a.tx,
            a.org,
            "CreateAction",
            patientsAnswered=a.patients,
            # The last answer's tx is the one that published the result.
            **({"result": {"@id": crates.RESULT_FILE}} if a is last else {}),
        )
        for a in answers
    ]
    crates.query_crate(crate, chain_id=node.config.chain_id, query=record, acts=acts)
