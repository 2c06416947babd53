"""What every command shares: the console, the --home option, turning errors into exits, and
the care commands' options and helpers (patients, times, hashes, signers, events)."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

if TYPE_CHECKING:
    from medledger.consensus.engine import Committed
    from medledger.node import Node
    from medledger.node.wallet import Wallet

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

HomeOption = Annotated[
    Path,
    typer.Option("--home", "-H", help="The hospital's home folder (made by `medledger init`)."),
]


#: The exit status of a command whose tx was sent but whose fate is not known yet (EX_TEMPFAIL).
PENDING_EXIT = 75


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Known failures become one clear line and a non-zero exit, never a traceback."""
    from medledger.ledger.keys import KeyFileError
    from medledger.node.config import ConfigError
    from medledger.node.outbox import TxPending
    from medledger.node.wallet import TxRejected
    from medledger.vault.errors import VaultError

    try:
        yield
    except TxPending as exc:
        # Not an error: the act may well have happened. Say what is known, and how to learn more.
        err_console.print(f"[bold yellow]pending:[/] {exc}", highlight=False)
        raise typer.Exit(PENDING_EXIT) from None
    except (ConfigError, KeyFileError, TxRejected, ValueError, TimeoutError) as exc:
        fail(str(exc))
    except FileNotFoundError as exc:
        fail(f"{exc.filename}: not found")
    except ConnectionError as exc:
        fail(f"cannot reach the node: {exc} (is it running? `medledger net status`)")
    except VaultError as exc:
        fail(f"vault: {exc}")
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


def short(data: bytes, n: int = 16) -> str:
    return data.hex()[:n]


PatientOption = Annotated[
    str, typer.Option("--patient", help="The patient's INS, or their pid (64 hex).")
]
AsOption = Annotated[
    str, typer.Option("--as", help="Sign as this practitioner of your hospital (default: org key).")
]
PatientKeyOption = Annotated[
    Path | None,
    typer.Option("--patient-key", help="Sign with the patient's own key file (hex seed)."),
]
EvidenceOption = Annotated[
    Path | None,
    typer.Option(help="The evidence file (signed form); its SHA-256 goes on the chain."),
]
EvidenceHashOption = Annotated[str, typer.Option(help="Or the evidence's SHA-256, hex.")]
TakenByOption = Annotated[
    str,
    typer.Option(
        "--practitioner",
        help="The practitioner of your hospital who took the patient's request (on their "
        "behalf, signed by the organisation key).",
    ),
]


def pid_arg(value: str, home: Path) -> str:
    """A pid as such, or a patient's INS pseudonymised under the consortium key (the INS itself
    goes nowhere else)."""
    from medledger.contracts.common import is_pid
    from medledger.node.config import load_config
    from medledger.node.patients import resolve_pid

    text = value.strip().lower()
    if is_pid(text):
        return text
    return resolve_pid(load_config(home).pseudonym_key(), value)


def when_ms(value: str, option: str) -> int:
    """An instant given as integer ms, an ISO date (midnight UTC) or an ISO date-time."""
    if value.isdigit():
        return int(value)
    try:
        t = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{option}: {value!r} is not a date, date-time or ms") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.UTC)
    return int(t.timestamp() * 1000)


def now_ms() -> int:
    """The CLI's "now": the wall clock (contracts use block time; this only fills defaults)."""
    return int(datetime.datetime.now(datetime.UTC).timestamp() * 1000)


def iso(ms: int) -> str:
    if not ms:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M")


def hex32(value: str, option: str) -> bytes:
    try:
        data = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{option}: not hex") from None
    if len(data) != 32:
        raise ValueError(f"{option}: expected 32 bytes (64 hex digits), got {len(data)}")
    return data


def file_hash(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def evidence(path: Path | None, hex_value: str = "") -> bytes:
    if path is not None:
        return file_hash(path)
    if hex_value:
        return hex32(hex_value, "--evidence-hash")
    return b""


def csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def signer(node: Node, practitioner: str = "", patient_key: Path | None = None) -> Wallet:
    """The wallet to sign with: the patient's key, a practitioner's, or the hospital's."""
    from medledger.ledger.keys import SigningKey
    from medledger.node.wallet import Wallet

    if patient_key is not None:
        return Wallet(SigningKey.from_file(patient_key), node.config.chain_id, node.engine)
    if practitioner:
        return node.practitioner_wallet(practitioner)
    return node.wallet


def taken_by(node: Node, practitioner: str, as_: str, *, required: bool = True) -> str:
    """Who took a patient's request, checked on the chain before signing anything: the
    message's `taken_by` ("" when the signer is the practitioner themself, or nobody is named).

    With `--as`, the signer is that practitioner; with `--practitioner`, the organisation key
    signs and the message names them (`taken_by`). The contract checks the same again.
    """
    from medledger.contracts import queries
    from medledger.contracts.patients import REQUEST_ROLES

    if practitioner and as_ and practitioner != as_:
        raise ValueError("--practitioner: with --as, the practitioner who signs took the request")
    who = practitioner or as_
    if not who:
        if required:
            raise ValueError(
                "--practitioner: name the practitioner who took the patient's request "
                "(or sign with the patient's key: --patient-key)"
            )
        return ""
    org = node.config.org
    known = queries.practitioners(node.engine, org)
    found = next((p for p in known if p["id"] == who), None)
    if found is None:
        raise ValueError(f"--practitioner: {org} has no practitioner {who!r}")
    if not found["active"]:
        raise ValueError(f"--practitioner: practitioner {org}/{who} is revoked")
    if not REQUEST_ROLES.intersection(found["roles"]):
        raise ValueError(
            f"--practitioner: {org}/{who} lacks a role allowed to take a patient's request "
            f"({', '.join(sorted(REQUEST_ROLES))})"
        )
    return who if practitioner and not as_ else ""


def send_for_patient(
    node: Node,
    msg: Any,
    practitioner: str,
    as_: str,
    patient_key: Path | None,
    *,
    volatile: tuple[str, ...] = (),
) -> Committed:
    """Send a patient's act (a consent, its revocation, an enrolment...): signed with their own
    key, or on their behalf naming who took the request (`taken_by`). The practitioner is
    needed once evidence is given; without it the contract's refusal says what is missing
    first (or, for a revocation, the recording hospital withdraws its own record)."""
    if patient_key is None:
        msg.taken_by = taken_by(node, practitioner, as_, required=bool(msg.evidence_hash))
    return send(node, signer(node, as_, patient_key), msg, volatile=volatile)


def send(node: Node, wallet: Wallet, msg: Any, *, volatile: tuple[str, ...] = ()) -> Committed:
    """Send a signed act through the home's outbox (`node.outbox`): kept on disk before it
    leaves, so that a lost answer says "pending", never "error", and a re-run acts once."""
    from medledger.node.outbox import Outbox

    return Outbox(node.config.home / "outbox").send(wallet, msg, volatile=volatile)


def event(committed: Any, kind: str) -> dict[str, str]:
    for e in committed.result.events:
        if e.type == kind:
            return dict(e.attrs)
    return {}
