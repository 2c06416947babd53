"""Records: the shared index of who holds which record of which pseudonymous patient.

An entry is `{rid, pid, custodian, commitment, meta_ct}`: `pid` is a pseudonym,
`commitment = HMAC-SHA256(per-record salt, resource bytes)` binds the record without revealing
it, and `meta_ct` is its metadata (type, category, code, date, title) encrypted under the
custodian's metadata key for that patient. No clinical value or identifier is readable here.

A ciphertext's length would still tell what it hides (one length per title: "Heart failure"
always gave the same size), so the metadata is padded before sealing to one of a few fixed
sizes (`indexing.seal_meta`) and the contract accepts only those: `len(meta_ct)` must be one
of `META_CT_SIZES`, so an unpadded ciphertext is refused by every replica, whatever the
submitting node's software. A disclosure's `basis` is a code as in `access` (`consent:<id>`...,
at most `MAX_BASIS` characters) and its rids are distinct records of the same tx.

A bundle registers in one tx (`records.register` takes a list), so it is all or nothing on
the chain too. A registration may name its `author`: `practitioner:<custodian>/<id>` (active,
with a care role: physician, nurse or emergency) or `org:<custodian>` (a system client of the
hospital). The entries then record that practitioner as `by`. Every registration, with or
without an author, writes itself on the patient's access trail in the same tx: one `create`
(new records) or `update` (new versions) entry per patient, naming the rids and the author
(without one, the signing key: `org:<custodian>` for the hospital's own feeds, CLI and node
ingestion, or the signing practitioner). So no index entry, not even a junk one, is ever
invisible on the patient's trail. `records.amend` chains versions. `records.shredded`
records that a holder destroyed a patient's keys: one write, whatever the number of entries,
since every remaining entry of that patient at that holder is now undecryptable.

Custody. The chain cannot know whether a hospital really treated a patient, and one index
entry is all it takes to be a custodian (`is_custodian`), which lets a hospital act in the
patient's name (`patients.acting_for_patient`). So custody is made visible and dated: the
first care record a hospital registers for a pid starts its custody (`rec/custody`, written
once, `custody_since`); a hospital that joins a patient who already has custodians emits
`records.custodian_joined` (pid, org: the patient's stream and portal) and one
`records.notify` per earlier custodian (its DPO's queue). The date is what the other
contracts weigh: only a custodian whose custody began before an act may contest or cancel it
(consent.py, erasure.py, patients.py), and a first key binding needs custody at least
`custody_min_age_ms` old. A shredding (`records.shredded`) ends the holder's custody.
Since v2 only a hospital whose custody of the pid runs or ran may state one (`ever_custodian`),
or a holder of copies under the patient's erasure request (`SHRED_RULES`, from `erasure`),
whose statement is marked `copies_only` and ends no custody: under v1 any member could, and
so became an eligible export receiver of any patient under access v4 (`held_custody`) by its
own act. Once v2 runs, a statement counts as ended custody only from a holder with a care
record of its own for the pid, so one made under v1 by a non-custodian stops counting too.

Who signs (v3, session 14). A shredding is the node's statement about its own vault (the
patient's key destroyed, the replica peers that dropped it): v1 and v2 took it from any
active key of the holder, so one clinician's key, stolen or careless, could end the
hospital's custody and give `erasure` the digest it takes as the holder's attestation. v3
takes `records.shredded` from the organisation key only. And a practitioner who signs a
registration or an amendment needs a care role (`WRITER_ROLES`), as one named `author`
already did: under v1 and v2 a researcher's, DPO's or admin's key registered records, and so
started its hospital's custody of any pid. Refused `UNAUTHORIZED`, naming the signer. Under
v1 and v2 a chain replays as it did.

Who discloses (v4, session 15, review15). A registration's `disclosures` write `export`
entries on the patient's trail, to another member, on a basis the signer attests, and mark
the records disclosed (the receiver's reads of them are then served without an entry of
their own). Only the node's ingestion writes them, with the organisation key; up to v3 a
clinician's own key could, so it wrote exports that never were into its hospital's trail,
which `access` v6 closed for `access.log`. v4 takes disclosures from the organisation key
only (a practitioner's registration without any is unchanged); refused `UNAUTHORIZED`,
naming the signer.

State (prefix `rec/`):
    rec/entry/<rid>                         latest version of an entry
    rec/version/<rid>/<version:08d>         each version's commitment and metadata
    rec/pid/<pid>/<rid>                     a patient's entries, by custodian
    rec/shredded/<holder>/<pid>             crypto-shredding attestation
    rec/custody/<pid>/<org>                 since_ms: when org's custody of the pid began

Only this module spells these keys; the other contracts and the exchange ask `entry`,
`indexed`, `entries_of`, `custodians_of`, `is_custodian`, `custody_since`, `custodies`,
`custody_of`, `held_custody`, `is_shredded`, `shred_statement` and `disclosed`. Writes are
logged through access.py (`record_entry`), which imports nothing of this module (its v4
asks `held_custody` of an export's receiver through `access.RECEIVER_RULES`).

What a custodian holds, for its recovery (`records/custody_of`): the pids whose custody at it
runs now, read from `rec/custody/` (keyed pid first, so the query filters a scan of every
custody of the consortium: no index by custodian is added, and a chain replays as it always
did). A restore checks these against what came back from the replicas, so a patient of whom
no peer holds anything is still named.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field
from typing import Any

from medledger.contracts import identity
from medledger.contracts.access import (
    MAX_BASIS,
    MAX_RIDS,
    RECEIVER_RULES,
    check_basis,
    record_entry,
)
from medledger.contracts.access import Entry as AccessEntry
from medledger.contracts.categories import PURPOSE_ROLES
from medledger.contracts.common import check_id, check_pid, is_pid
from medledger.contracts.governance import contract_version, is_member
from medledger.contracts.identity import acting_org
from medledger.ledger import codec
from medledger.ledger.contract import Context, Contract, Message, parse_item
from medledger.ledger.errors import Code, TxError
from medledger.ledger.store import StateView

#: Padded plaintext sizes of the sealed metadata (see `indexing.seal_meta`): nearly every
#: record fits the first; only very long codes or non-Latin titles need the second.
META_BUCKETS = (256, 1024)
#: AES-GCM adds a 12-byte nonce and a 16-byte tag: the only lengths a `meta_ct` may have.
META_CT_SIZES = tuple(12 + size + 16 for size in META_BUCKETS)
MAX_ENTRIES = 2000
#: Roles that may author records (the care roles; an organisation key may too).
WRITER_ROLES = PURPOSE_ROLES["treatment"]


@dataclass
class Entry:
    rid: str
    pid: str
    commitment: bytes
    meta_ct: bytes
    version: int = 1  # above 1: the next version of a record this hospital holds


@dataclass
class Disclosure:
    """Records of this tx made available to an entitled hospital at once (see register)."""

    org: str
    basis: str  # what entitles it: consent:<id>, referral:<id>, ...
    rids: list[str]


@dataclass
class Register:
    entries: list[dict[str, Any]]
    disclosures: list[dict[str, Any]] = field(default_factory=list)
    author: str = ""  # who wrote them (see module doc); "" is the signing hospital itself


@dataclass
class Amend:
    rid: str
    commitment: bytes
    meta_ct: bytes


@dataclass
class Shredded:
    pid: str
    digest: bytes  # hash of the vault's erasure receipt
    records: int
    copies: int = 0
    # The holder's replica peers (node/replicas.py) that signed a receipt for dropping the
    # patient's wrapped key, and those that had not yet (down: they get the drop on return).
    replicas_dropped: list[str] = field(default_factory=list)
    replicas_pending: list[str] = field(default_factory=list)


#: Replica peers one shredding may name (the consortium's backup_replicas is a handful).
MAX_REPLICAS = 16


def _check_entry(i: int, raw: Any) -> Entry:
    entry = parse_item(Entry, raw, f"entries[{i}]")
    check_id(entry.rid, f"entries[{i}].rid")
    check_pid(entry.pid, f"entries[{i}].pid")
    if len(entry.commitment) != 32:
        raise TxError(Code.INVALID_BODY, f"field entries[{i}].commitment: must be 32 bytes")
    if len(entry.meta_ct) not in META_CT_SIZES:
        sizes = " or ".join(str(n) for n in META_CT_SIZES)
        raise TxError(
            Code.INVALID_BODY,
            f"field entries[{i}].meta_ct: {len(entry.meta_ct)} bytes; sealed metadata is padded "
            f"to {sizes} bytes so that its length tells nothing",
        )
    return entry


def _author(ctx: Context, custodian: str, practitioner: str | None, author: str) -> str | None:
    """The practitioner id the author names (None: the hospital), refusing any other."""
    if author == f"org:{custodian}" and practitioner is None:
        return None
    org, _, ident = author.removeprefix("practitioner:").partition("/")
    if not author.startswith("practitioner:") or org != custodian:
        raise TxError(
            Code.UNAUTHORIZED, f"field author: not org:{custodian} or one of its practitioners"
        )
    check_id(ident, "author")
    if practitioner is not None and practitioner != ident:
        raise TxError(Code.UNAUTHORIZED, "field author: a practitioner signs only as themself")
    record = identity.practitioner(ctx.state, custodian, ident)
    if record is None or not record["active"]:
        raise TxError(Code.UNAUTHORIZED, f"field author: {author} is not an active practitioner")
    if not WRITER_ROLES.intersection(record["roles"]):
        raise TxError(Code.UNAUTHORIZED, f"field author: {author} has no role that writes records")
    return ident


def _log_writes(
    ctx: Context, custodian: str, author: str, pids: dict[str, str], created: set[str], n: int
) -> None:
    """The registration's writes on the access trail, in its own tx (see module doc);
    `created`: the rids registered at version 1 (the others are updates)."""
    by_key: dict[tuple[str, str], list[str]] = {}
    for rid, pid in sorted(pids.items()):  # a defined order: the rids land on the chain
        action = "create" if rid in created else "update"
        by_key.setdefault((pid, action), []).append(rid)
    for (pid, action), rids in sorted(by_key.items()):
        for start in range(0, len(rids), MAX_RIDS):  # an entry names at most MAX_RIDS rids
            entry = AccessEntry(
                actor=author,
                actor_org=custodian,
                pid=pid,
                action=action,
                purpose="treatment",
                outcome="granted",
                basis="custodian",
                rids=rids[start : start + MAX_RIDS],
            )
            record_entry(ctx, custodian, n, entry)
            n += 1


def _start_custody(ctx: Context, pid: str, org: str) -> None:
    """The first care record of pid at org starts its custody; earlier custodians hear of it."""
    key = f"rec/custody/{pid}/{org}"
    if ctx.state.has(key):
        return
    earlier = sorted(
        k.rsplit("/", 1)[1] for k, _ in ctx.state.scan(f"rec/custody/{pid}/") if k != key
    )
    ctx.state.put(key, ctx.time_ms)
    if earlier:
        ctx.emit("records.custodian_joined", pid=pid, org=org)
        for custodian in earlier:
            ctx.emit("records.notify", pid=pid, custodian=custodian, org=org)


def _writer(ctx: Context) -> tuple[str, str | None]:
    """The signer's hospital and practitioner, as `acting_org`; from v3 a practitioner who
    signs a registration or an amendment needs a care role, as one named `author` does
    (v1 and v2 took any role: a researcher's, a DPO's or an admin's key started custody)."""
    custodian, practitioner = acting_org(ctx)
    if (
        practitioner is not None
        and contract_version(ctx.state, "records") >= 3
        and not WRITER_ROLES.intersection(identity.roles_of(ctx.state, custodian, practitioner))
    ):
        raise TxError(
            Code.UNAUTHORIZED,
            f"signer: practitioner {custodian}/{practitioner} has no role that writes "
            f"records ({', '.join(sorted(WRITER_ROLES))})",
        )
    return custodian, practitioner


def register(ctx: Context, msg: Register) -> None:
    custodian, practitioner = _writer(ctx)
    if msg.disclosures and practitioner is not None and contract_version(ctx.state, "records") >= 4:
        raise TxError(
            Code.UNAUTHORIZED,
            f"signer: practitioner {custodian}/{practitioner} may not disclose records to "
            "another hospital; disclosures are signed by the organisation key (its node's "
            "ingestion)",
        )
    if msg.author:
        practitioner = _author(ctx, custodian, practitioner, msg.author)
    if not 0 < len(msg.entries) <= MAX_ENTRIES:
        raise TxError(Code.INVALID_BODY, f"field entries: 1..{MAX_ENTRIES} entries per tx")
    seen: set[str] = set()
    # The pid as the index now holds it (an amendment keeps its record's pid).
    pids: dict[str, str] = {}
    created: set[str] = set()
    if len(msg.disclosures) > len(msg.entries) * 8:
        raise TxError(Code.INVALID_BODY, "field disclosures: too many")
    for i, raw in enumerate(msg.entries):
        entry = _check_entry(i, raw)
        if entry.rid in seen:
            raise TxError(Code.CONFLICT, f"entries[{i}]: record {entry.rid} is repeated")
        seen.add(entry.rid)
        if entry.version != 1:
            # A bundle may carry updates too (HL7 A08): the whole unit stays one tx.
            _amend(
                ctx,
                custodian,
                practitioner,
                entry.rid,
                entry.version,
                entry.commitment,
                entry.meta_ct,
                f"entries[{i}]: ",
            )
            pids[entry.rid] = str(ctx.state.get(f"rec/entry/{entry.rid}")["pid"])
            continue
        if ctx.state.has(f"rec/entry/{entry.rid}"):
            raise TxError(Code.CONFLICT, f"entries[{i}]: record {entry.rid} already exists")
        record = {
            "rid": entry.rid,
            "pid": entry.pid,
            "custodian": custodian,
            "by": practitioner or "",
            "version": 1,
            "commitment": entry.commitment,
            "meta_ct": entry.meta_ct,
            "time": ctx.time_ms,
            "tx": ctx.tx_id,
        }
        encoded = codec.encode_trusted(record)  # the same bytes under both keys
        ctx.state.put_raw(f"rec/entry/{entry.rid}".encode(), encoded)
        ctx.state.put_raw(f"rec/version/{entry.rid}/{1:08d}".encode(), encoded)
        ctx.state.put(f"rec/pid/{entry.pid}/{entry.rid}", custodian)
        pids[entry.rid] = entry.pid
        created.add(entry.rid)
        _start_custody(ctx, entry.pid, custodian)
        ctx.emit("record.registered", rid=entry.rid, pid=entry.pid, custodian=custodian)
    n = _disclose(ctx, custodian, msg, pids) if msg.disclosures else 0
    # Always on the patient's trail, named after the author or else the signing key.
    signed_as = f"practitioner:{custodian}/{practitioner}" if practitioner else f"org:{custodian}"
    _log_writes(ctx, custodian, msg.author or signed_as, pids, created, n)


def _disclose(ctx: Context, custodian: str, msg: Register, pids: dict[str, str]) -> int:
    """Record, in the registration's own tx, that entitled hospitals may have the new records.

    A hospital entitled to a patient (by consent or referral) fetches each new record as soon
    as it sees it; the custodian serves a fetch only once its access entry is committed. With
    the disclosure logged here, that entry commits with the record itself, so the entitled
    hospital is served without waiting for one more block. The custodian attests the basis,
    as it does in `access.log`.
    """
    n = 0
    for i, raw in enumerate(msg.disclosures):
        d = parse_item(Disclosure, raw, f"disclosures[{i}]")
        if d.org == custodian or not is_member(ctx.state, d.org):
            raise TxError(Code.INVALID_BODY, f"field disclosures[{i}].org: not another member")
        if not 0 < len(d.basis) <= MAX_BASIS:
            raise TxError(
                Code.INVALID_BODY, f"field disclosures[{i}].basis: required, at most {MAX_BASIS}"
            )
        check_basis(d.basis, f"disclosures[{i}].basis")
        if len(set(d.rids)) != len(d.rids):
            raise TxError(Code.INVALID_BODY, f"field disclosures[{i}].rids: a record is repeated")
        by_pid: dict[str, list[str]] = {}
        for rid in d.rids:
            if rid not in pids:
                raise TxError(
                    Code.INVALID_BODY, f"field disclosures[{i}].rids: {rid} is not in this tx"
                )
            by_pid.setdefault(pids[rid], []).append(rid)
        for pid, rids in sorted(by_pid.items()):
            entry = AccessEntry(
                actor=f"org:{d.org}",
                actor_org=d.org,
                pid=pid,
                action="export",
                purpose="treatment",
                outcome="granted",
                basis=d.basis,
                rids=rids,
            )
            key = record_entry(ctx, custodian, n, entry)
            n += 1
            for rid in rids:
                ctx.state.put(f"rec/disclosed/{d.org}/{rid}", key)
    return n  # the number of access entries written, for the next ones of this tx


def disclosed(state: StateView, org: str, rid: str) -> bool:
    """Whether the records' own tx already recorded this record's disclosure to org."""
    return state.has(f"rec/disclosed/{org}/{rid}")


def amend(ctx: Context, msg: Amend) -> None:
    custodian, practitioner = _writer(ctx)
    record = ctx.state.get(f"rec/entry/{msg.rid}")
    version = (record["version"] + 1) if record is not None else 2
    _amend(ctx, custodian, practitioner, msg.rid, version, msg.commitment, msg.meta_ct, "")


def _amend(
    ctx: Context,
    custodian: str,
    practitioner: str | None,
    rid: str,
    version: int,
    commitment: bytes,
    meta_ct: bytes,
    where: str,
) -> None:
    record = ctx.state.get(f"rec/entry/{rid}")
    if record is None:
        raise TxError(Code.NOT_FOUND, f"{where}no record {rid}")
    if record["custodian"] != custodian:
        raise TxError(Code.UNAUTHORIZED, f"{where}record {rid} belongs to {record['custodian']}")
    if ctx.state.has(f"rec/shredded/{custodian}/{record['pid']}"):
        raise TxError(Code.REFUSED, f"{where}record {rid}: the patient's data was erased")
    if version != record["version"] + 1:
        raise TxError(
            Code.CONFLICT,
            f"{where}record {rid} is at version {record['version']}, not {version - 1}",
        )
    _check_entry(
        0, {"rid": rid, "pid": record["pid"], "commitment": commitment, "meta_ct": meta_ct}
    )
    record.update(
        version=version,
        commitment=commitment,
        meta_ct=meta_ct,
        by=practitioner or "",
        time=ctx.time_ms,
        tx=ctx.tx_id,
    )
    ctx.state.put(f"rec/entry/{rid}", record)
    ctx.state.put(f"rec/version/{rid}/{version:08d}", record)
    ctx.emit("record.amended", rid=rid, pid=record["pid"], custodian=custodian, version=version)


def shredded(ctx: Context, msg: Shredded) -> None:
    holder, practitioner = acting_org(ctx)
    if practitioner is not None and contract_version(ctx.state, "records") >= 3:
        # v1 and v2 took it from any active practitioner key of the holder: a clinician's
        # key, stolen or careless, could end the hospital's custody and hand the erasure
        # contract the digest it takes as the holder's attestation.
        raise TxError(
            Code.UNAUTHORIZED,
            f"signer: practitioner {holder}/{practitioner} may not state a shredding; "
            "records.shredded is signed by the hospital's organisation key (its node, "
            "which erased the vault)",
        )
    check_pid(msg.pid)
    copies_only = False
    if contract_version(ctx.state, "records") >= 2 and not ever_custodian(
        ctx.state, msg.pid, holder
    ):
        # v1 took it from any member, who then passed `held_custody` (access v4's receiver
        # rule) by its own act. A holder of copies only states it under the patient's
        # erasure request (SHRED_RULES), and that statement ends no custody.
        if not any(rule(ctx.state, msg.pid, holder) for rule in SHRED_RULES):
            raise TxError(
                Code.UNAUTHORIZED,
                f"field pid: {holder} never held custody of this patient (no care record of "
                "its own for the pid) nor holds copies under their erasure request",
            )
        copies_only = True
    if len(msg.digest) != 32:
        raise TxError(Code.INVALID_BODY, "field digest: must be 32 bytes")
    if msg.records < 0 or msg.copies < 0:
        raise TxError(Code.INVALID_BODY, "field records: must not be negative")
    statement: dict[str, Any] = {
        "holder": holder,
        "pid": msg.pid,
        "digest": msg.digest,
        "records": msg.records,
        "copies": msg.copies,
        "time": ctx.time_ms,
        "tx": ctx.tx_id,
    }
    statement.update(check_replicas(ctx.state, holder, msg.replicas_dropped, msg.replicas_pending))
    if copies_only:
        statement["copies_only"] = True
    ctx.state.put(f"rec/shredded/{holder}/{msg.pid}", statement)
    # Its custody ends: a later record starts a new one (is_custodian stays false meanwhile).
    ctx.state.delete(f"rec/custody/{msg.pid}/{holder}")
    ctx.emit("record.shredded", pid=msg.pid, holder=holder, records=msg.records)


def check_replicas(
    state: StateView, holder: str, dropped: list[str], pending: list[str]
) -> dict[str, list[str]]:
    """An erasure's replica peers (node/replicas.py) as an attestation names them: other
    members, each once, at most MAX_REPLICAS; returns the fields to store (only those named,
    so an attestation without replicas is written as it always was)."""
    named = [*dropped, *pending]
    if len(named) > MAX_REPLICAS:
        raise TxError(
            Code.INVALID_BODY, f"field replicas_dropped: at most {MAX_REPLICAS} peers in all"
        )
    for i, org in enumerate(named):
        where = (
            f"replicas_dropped[{i}]"
            if i < len(dropped)
            else f"replicas_pending[{i - len(dropped)}]"
        )
        if not isinstance(org, str) or org == holder or not is_member(state, org):
            raise TxError(Code.INVALID_BODY, f"field {where}: not another member's org id")
        if named.index(org) != i:
            raise TxError(Code.INVALID_BODY, f"field {where}: {org} named twice")
    fields = {"replicas_dropped": list(dropped), "replicas_pending": list(pending)}
    return {k: v for k, v in fields.items() if v}


def is_shredded(state: StateView, holder: str, pid: str) -> bool:
    return state.has(f"rec/shredded/{holder}/{pid}")


def shred_statement(state: StateView, holder: str, pid: str) -> dict[str, Any] | None:
    """The holder's records.shredded statement for the pid (digest, counts), or None."""
    found: dict[str, Any] | None = state.get(f"rec/shredded/{holder}/{pid}")
    return found


def custodians_of(state: StateView, pid: str) -> list[str]:
    """Hospitals holding this patient's care records in the index (their own, not copies)."""
    return sorted({str(holder) for _, holder in state.scan(f"rec/pid/{pid}/")})


def custody_since(state: StateView, pid: str, org: str) -> int | None:
    """When org's custody of the pid began (block time, ms), None if it holds none now."""
    if is_shredded(state, org, pid):
        return None
    since = state.get(f"rec/custody/{pid}/{org}")
    return None if since is None else int(since)


def held_custody(state: StateView, pid: str, org: str) -> bool:
    """Whether org's custody of the pid runs, or ran until org's own shredding of it (access
    v4: a receiver the custodian may have sent the patient's data to before that). A holder
    of copies only ended no custody by its shredding (v2 marks its statement so)."""
    return state.has(f"rec/custody/{pid}/{org}") or _shredded_custody(state, org, pid)


def _shredded_custody(state: StateView, holder: str, pid: str) -> bool:
    statement = shred_statement(state, holder, pid)
    if statement is None or statement.get("copies_only"):
        return False
    # Once v2 runs, a statement made under v1 by a member that never held the pid (unmarked:
    # v1 took it from anyone) ends no custody either: only a care record of its own shows
    # that it had one. v1 chains replay as they did.
    return contract_version(state, "records") < 2 or _has_own_record(state, pid, holder)


def _has_own_record(state: StateView, pid: str, org: str) -> bool:
    return any(holder == org for _, holder in state.scan(f"rec/pid/{pid}/"))


def ever_custodian(state: StateView, pid: str, org: str) -> bool:
    """Whether org's custody of the pid runs or ran: its custody record, a care record of its
    own in the index (kept after a shredding), or its earlier shredding statement as a
    custodian (a resent one). What records v2 asks of a `records.shredded` signer."""
    return held_custody(state, pid, org) or _has_own_record(state, pid, org)


#: Other grounds on which a hospital that never held custody of a pid may state that it
#: shredded it (records v2), each (state, pid, org) -> bool: `erasure` adds "holds copies
#: under the patient's erasure request".
SHRED_RULES: list[Callable[[StateView, str, str], bool]] = []


def _receives_as_custodian(state: StateView, pid: str, to: str, custodian: str) -> bool:
    return held_custody(state, pid, to)


RECEIVER_RULES.append(_receives_as_custodian)


def custodies(state: StateView, pid: str) -> dict[str, int]:
    """Every hospital whose custody of the pid runs now -> since when (the portal lists them)."""
    found = {}
    for key, since in state.scan(f"rec/custody/{pid}/"):
        org = key.rsplit("/", 1)[1]
        if not is_shredded(state, org, pid):
            found[org] = int(since)
    return found


def custodies_of(state: StateView, pids: Container[str]) -> dict[str, dict[str, int]]:
    """`custodies` of many pids (a pid with none is left out): one pass over the custody keys
    and one over the shredding statements' keys, instead of a scan and lookups per pid."""
    return _custodies_where(state, lambda pid, orgs: pid in pids)


def custodies_at(state: StateView, org: str) -> dict[str, dict[str, int]]:
    """`custodies` of every pid whose custody runs at org (those `custody_of` lists), in the
    same passes as `custodies_of`."""
    return _custodies_where(state, lambda pid, orgs: org in orgs and len(pid) == 64)


def _custodies_where(
    state: StateView, wanted: Callable[[str, dict[str, bytes]], bool]
) -> dict[str, dict[str, int]]:
    shredded = set()
    for key, _ in state.scan_raw(b"rec/shredded/"):
        holder, _, pid = key[len(b"rec/shredded/") :].decode().partition("/")
        shredded.add((holder, pid))
    found: dict[str, dict[str, int]] = {}

    def keep(pid: str, orgs: dict[str, bytes]) -> None:
        if orgs and wanted(pid, orgs):
            running = {o: int(codec.decode_trusted(v)) for o, v in orgs.items()}
            found[pid] = {o: since for o, since in running.items() if (o, pid) not in shredded}

    # The keys of one pid are contiguous (rec/custody/<pid>/<org>): grouped as they come.
    current, orgs = "", dict[str, bytes]()
    for key, raw in state.scan_raw(b"rec/custody/"):
        pid, _, holder = key[len(b"rec/custody/") :].decode().partition("/")
        if pid != current:
            keep(current, orgs)
            current, orgs = pid, {}
        orgs[holder] = raw
    keep(current, orgs)
    return {pid: held for pid, held in found.items() if held}


#: Pids one `records/custody_of` answer carries at most (64 hex characters each).
MAX_CUSTODY_PAGE = 10_000


def custody_of(
    state: StateView, org: str, after: str = "", limit: int = MAX_CUSTODY_PAGE
) -> list[str]:
    """The pids, in order and after `after`, whose custody at org runs now (its first care
    record started it and no `records.shredded` of it ended it since): at most `limit`.

    Scanned range by range of the pid's first two hex digits, from `after`'s on: a page does
    not scan again the custodies of the pages before it."""
    found: list[str] = []
    suffix = f"/{org}".encode()
    for first in range(int(after[:2] or "0", 16), 256):
        for key, _ in state.scan_raw(f"rec/custody/{first:02x}".encode()):
            pid = key[len(b"rec/custody/") : -len(suffix)].decode()
            if key.endswith(suffix) and pid > after and len(pid) == 64:
                found.append(pid)
                if len(found) >= limit:
                    return found
    return found


def is_custodian(state: StateView, pid: str, org: str) -> bool:
    """Whether org holds care records of this patient that it can still read.

    Copies held elsewhere are not in the index under the holder, so they never count; a
    hospital that destroyed the patient's keys (records.shredded) no longer counts either.
    """
    if is_shredded(state, org, pid):
        return False
    return _has_own_record(state, pid, org)


def entry(state: StateView, rid: str) -> dict[str, Any] | None:
    """A record's index entry (pid, custodian, version, hashes), or None."""
    found: dict[str, Any] | None = state.get(f"rec/entry/{rid}")
    return found


def indexed(state: StateView, pid: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(holder, index entry) of each care record of the pid, in the index's key order."""
    for key, holder in state.scan(f"rec/pid/{pid}/"):
        found = entry(state, key.rsplit("/", 1)[1])
        if found is not None:
            yield str(holder), found


def entries_of(state: StateView, pid: str, custodian: str | None = None) -> list[dict[str, Any]]:
    found = []
    for holder, record in indexed(state, pid):
        if custodian is not None and holder != custodian:
            continue
        record["shredded"] = is_shredded(state, record["custodian"], pid)
        found.append(record)
    return found


def q_of_patient(state: StateView, args: dict[str, Any]) -> list[dict[str, Any]]:
    pid = args.get("pid")
    if not isinstance(pid, str):
        raise TxError(Code.INVALID_BODY, "records/of_patient needs pid")
    custodian = args.get("custodian")
    return entries_of(state, pid, custodian if isinstance(custodian, str) else None)


def q_entry(state: StateView, args: dict[str, Any]) -> dict[str, Any] | None:
    return entry(state, str(args.get("rid")))


def q_versions(state: StateView, args: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for _, v in state.scan(f"rec/version/{args.get('rid')}/")]


def q_custody_of(state: StateView, args: dict[str, Any]) -> list[str]:
    org, after, limit = args.get("org"), args.get("after", ""), args.get("limit", MAX_CUSTODY_PAGE)
    if not isinstance(org, str) or not org:
        raise TxError(Code.INVALID_BODY, "records/custody_of needs org")
    if not isinstance(after, str) or (after and not is_pid(after)):
        raise TxError(Code.INVALID_BODY, "field after: a pid (64 lowercase hex characters)")
    if not isinstance(limit, int) or not 0 < limit <= MAX_CUSTODY_PAGE:
        raise TxError(Code.INVALID_BODY, f"field limit: 1..{MAX_CUSTODY_PAGE}")
    return custody_of(state, org, after, limit)


def q_shredded(state: StateView, args: dict[str, Any]) -> dict[str, Any] | None:
    return shred_statement(state, str(args.get("holder")), str(args.get("pid")))


_V1 = Contract(
    name="records",
    version=1,
    messages={
        "records.register": Message("records.register", Register, register),
        "records.amend": Message("records.amend", Amend, amend),
        "records.shredded": Message("records.shredded", Shredded, shredded),
    },
    queries={
        "records/of_patient": q_of_patient,
        "records/entry": q_entry,
        "records/versions": q_versions,
        "records/shredded": q_shredded,
        "records/custody_of": q_custody_of,
    },
)

#: v2 (session 11): `records.shredded` only from a hospital that held custody of the pid, or
#: holds copies under the patient's erasure request (`SHRED_RULES`).
#: v3 (session 14): `records.shredded` only from the organisation key; a practitioner who
#: signs `records.register` or `records.amend` needs a care role (`WRITER_ROLES`).
#: v4 (session 15): a registration's `disclosures` only from the organisation key.
CONTRACTS = [_V1, *(dataclasses.replace(_V1, version=v) for v in (2, 3, 4))]
