"""The requesting side of the exchange: signed calls to other hospitals' gateways over mTLS.

Calls go only to the addresses in the hospital's directory (config.json `exchange.peers`),
over TLS 1.3 pinned to the members' TLS keys on the chain (exchange.pki), and the server's
key must be the one the chain pins for the hospital dialled. Each request is signed by the
practitioner or hospital on whose behalf it is made.
Whatever comes back is checked against this hospital's own replica of the ledger: a record's
bytes must hash, with the salt served, to the commitment its custodian registered, so a
custodian (or anyone between) cannot serve something else than what the index promises.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cbor2
import httpx
import orjson
from nacl.public import PrivateKey, SealedBox

from medledger.contracts import queries
from medledger.contracts.categories import CATEGORIES, CATEGORY_SET
from medledger.exchange.pki import PinnedContexts, PinSource, TlsFiles, peer_org
from medledger.exchange.signing import RequestSigner
from medledger.ledger.errors import TxError
from medledger.ledger.keys import SigningKey, verify
from medledger.node.custody import MAX_ITEMS, Item, ItemInfo, drop_receipt_message
from medledger.node.indexing import check_commitment
from medledger.vault.replication import key_item_id

if TYPE_CHECKING:
    from medledger.ledger.results import BlockRecord
    from medledger.node import Node

log = logging.getLogger(__name__)

PREFIX = "/exchange/v1"
#: Largest answer read from a peer (a records answer: up to 500 resources, base64-encoded).
MAX_ANSWER = 64 * 1024 * 1024


class ExchangeError(Exception):
    """A peer refused or failed; `status` is its HTTP status (0 when it could not be reached)."""

    def __init__(self, org: str, status: int, reason: str) -> None:
        super().__init__(f"{org}: {reason}" + (f" (HTTP {status})" if status else ""))
        self.org = org
        self.status = status
        self.reason = reason

    @property
    def refused(self) -> bool:
        """True for a decision (403, 404, 410), false for a failure worth retrying."""
        return self.status in (400, 401, 403, 404, 409, 410)


class IntegrityError(ExchangeError):
    """What a peer served does not match the ledger (wrong commitment, version or custodian)."""


@dataclass(frozen=True)
class FetchedRecord:
    """A record received from its custodian, already checked against its commitment."""

    custodian: str
    pid: str
    rid: str
    version: int
    resource_type: str
    resource: bytes
    salt: bytes
    basis: str
    commitment: bytes

    @classmethod
    def from_wire(
        cls, rec: dict[str, Any], custodian: str, pid: str, basis: str, commitment: bytes
    ) -> FetchedRecord:
        """A record as a custodian sends it (bytes in base64), once `verify_fetched` has
        checked it against `commitment`: a fetch's answer and a referral's delivery alike."""
        return cls(
            custodian=custodian,
            pid=pid,
            rid=rec["rid"],
            version=int(rec["version"]),
            resource_type=str(rec["resource_type"]),
            resource=base64.b64decode(rec["resource"]),
            salt=base64.b64decode(rec["salt"]),
            basis=basis,
            commitment=commitment,
        )


@dataclass(frozen=True)
class Fetched:
    records: list[FetchedRecord]
    denied: list[dict[str, str]]
    missing: list[str]


class Directory:
    """org -> gateway URL; shared by a process's hospitals, updatable (sandbox, port 0).

    A hospital not in the configured `peers` is looked up in `members()` (the chain's member
    records): its `addresses["gateway"]`, so a member admitted later is reachable without
    editing every config.json."""

    def __init__(
        self,
        peers: dict[str, str] | None = None,
        members: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self._peers = dict(peers or {})
        self._members = members
        self._lock = threading.Lock()

    def url(self, org: str) -> str:
        with self._lock:
            found = self._peers.get(org)
        if found is None and self._members is not None:
            for m in self._members():
                gateway = (m.get("addresses") or {}).get("gateway")
                if m.get("org") == org and gateway:
                    found = f"https://{gateway}"
        if found is None:
            raise ExchangeError(org, 0, "not in this hospital's gateway directory")
        return found.rstrip("/")

    def set(self, org: str, url: str) -> None:
        with self._lock:
            self._peers[org] = url

    def orgs(self) -> list[str]:
        with self._lock:
            return sorted(self._peers)


def verify_fetched(
    state_entry_versions: list[dict[str, Any]], record: dict[str, Any], custodian: str, pid: str
) -> bytes:
    """The registered commitment of the version served, after checking the bytes against it."""
    version = record.get("version")
    match = next((v for v in state_entry_versions if v.get("version") == version), None)
    rid = record.get("rid", "?")
    if match is None:
        raise IntegrityError(custodian, 0, f"record {rid} v{version} is not in the index")
    if match["custodian"] != custodian or match["pid"] != pid:
        raise IntegrityError(custodian, 0, f"record {rid} is not held by {custodian} for pid")
    resource = base64.b64decode(record["resource"])
    salt = base64.b64decode(record["salt"])
    if not check_commitment(salt, resource, bytes(match["commitment"])):
        raise IntegrityError(custodian, 0, f"record {rid} v{version} does not match its commitment")
    return bytes(match["commitment"])


#: The events of the only txs that write a member's record (governance's): after a block
#: without one, the members and their TLS keys are what they were. `contract.activated`
#: too, since another governance version may answer the members' query otherwise.
MEMBER_EVENTS = frozenset(
    {
        "member.admitted",
        "member.rebound",
        "member.removed",
        "member.power",
        "member.updated",
        "contract.activated",
    }
)


def changes_members(record: BlockRecord) -> bool:
    """Whether a committed block may have changed the members (one of `MEMBER_EVENTS`)."""
    events = MEMBER_EVENTS
    return any(ev.type in events for ev in record.events) or any(
        ev.type in events for result in record.results for ev in result.events
    )


def member_pins(node: Node) -> PinSource:
    """The TLS keys of the current members, read from the node's replica. With a replica in
    this process they are read again right after a commit that may have changed them (one
    with a `MEMBER_EVENTS` event), in the committing thread, and kept: a post or a handshake
    asked the chain each time, under the lock that block commits and CheckTx take, and
    waited behind every reader (a study answer's plan holds it for a few tenths of a
    second); reading them after every block cost each commit ≈ 1 ms."""
    kept: list[dict[str, bytes]] = []  # the answer as of the last commit that changed them
    commits = [0]  # a read that saw such a commit begin does not keep its answer
    # `pins()` compares and keeps under it, so that a commit's answer is never replaced by
    # an older read (review 12c, finding 3).
    lock = threading.Lock()

    def read() -> dict[str, bytes]:
        current = queries.members(node.engine)
        return {str(m["org"]): m["tls_key"] for m in current if m.get("tls_key")}

    def committed(record: BlockRecord) -> None:
        if not changes_members(record):
            return
        with lock:
            commits[0] += 1
            kept.clear()
        try:
            fresh = read()
        except Exception as exc:  # noqa: BLE001 - the next `pins()` reads it (and says)
            log.debug("%s: members not read after a commit: %s", node.config.org, exc)
            return
        with lock:  # commits run one at a time: none began since this one
            kept[:] = [fresh]

    app = getattr(node, "app", None)
    if app is not None:
        app.add_commit_listener(committed)

    def pins() -> dict[str, bytes]:
        with lock:
            if kept:
                return kept[0]
            seen = commits[0]
        try:
            found = read()
        except TxError:  # a replica before CometBFT's InitChain (joining, recovering) has no
            return {}  # contracts yet: it trusts no one until then, and the contexts follow
        with lock:
            if app is not None and seen == commits[0] and not kept:
                kept[:] = [found]
        return found

    return pins


class ExchangeClient:
    """Calls other hospitals' gateways for one hospital, signed by `signer`.

    `signer` defaults to the hospital's organisation key; pass a practitioner's key to act on
    their behalf (their hospital's client certificate still carries the connection).
    """

    def __init__(
        self,
        node: Node,
        signer: SigningKey | None = None,
        directory: Directory | None = None,
        timeout: float = 60.0,
        max_answer: int = MAX_ANSWER,
    ) -> None:
        self.node = node
        self.max_answer = max_answer
        self.org = node.config.org
        self.signer = RequestSigner(signer or node.org_key)
        self.directory = directory or Directory(node.config.exchange.peers)
        self.trust = PinnedContexts(TlsFiles(node.config.tls_dir), member_pins(node))
        self._ssl = self.trust.client()
        self._timeout = timeout
        self._clients: dict[str, httpx.Client] = {}
        self._lock = threading.Lock()

    def with_signer(self, signer: SigningKey) -> ExchangeClient:
        """The same connections, signing as someone else (a practitioner)."""
        other = ExchangeClient.__new__(ExchangeClient)
        other.__dict__.update(self.__dict__)
        other.signer = RequestSigner(signer)
        return other

    def close(self) -> None:
        with self._lock:
            for c in self._clients.values():
                c.close()
            self._clients.clear()

    def _client(self, org: str) -> httpx.Client:
        base = self.directory.url(org)
        with self._lock:
            if not self.trust.current(self._ssl):  # members or keys changed: new handshakes
                for stale in self._clients.values():
                    stale.close()
                self._clients.clear()
                self._ssl = self.trust.client()
            client = self._clients.get(base)
            if client is None:
                client = httpx.Client(
                    base_url=base,
                    verify=self._ssl,
                    timeout=httpx.Timeout(self._timeout, connect=5.0),
                    # kept 25 s idle (httpx's default: 5 s), under the gateway's 30 s
                    limits=httpx.Limits(
                        max_connections=32, max_keepalive_connections=16, keepalive_expiry=25.0
                    ),
                )
                self._clients[base] = client
        return client

    @staticmethod
    def _check_server(org: str, response: httpx.Response) -> None:
        """The server certificate must name the hospital dialled, not just any member."""
        stream = response.extensions.get("network_stream")
        if stream is None:
            return
        ssl_object = stream.get_extra_info("ssl_object")
        if ssl_object is None:
            raise ExchangeError(org, 0, "the connection is not TLS")
        if peer_org(ssl_object) != org:
            raise ExchangeError(org, 0, "the server's TLS key is not the one the chain pins")

    def post(self, org: str, name: str, payload: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Signed POST to a peer; returns (answer, Server-Timing header)."""
        body = orjson.dumps(payload)
        path = f"{PREFIX}/{name}"
        headers = self.signer.headers("POST", path, body, org)
        headers["content-type"] = "application/json"
        try:
            with self._client(org).stream("POST", path, content=body, headers=headers) as response:
                self._check_server(org, response)
                content = self._read_answer(org, response)
        except httpx.HTTPError as exc:
            raise ExchangeError(org, 0, f"unreachable: {type(exc).__name__}: {exc}") from None
        try:
            answer = orjson.loads(content)
        except orjson.JSONDecodeError:
            answer = {"error": content[:200].decode(errors="replace")}
        if not isinstance(answer, dict):
            answer = {"error": "the answer is not a JSON object"}
            if response.status_code == 200:
                raise ExchangeError(org, 0, answer["error"])
        if response.status_code != 200:
            raise ExchangeError(org, response.status_code, str(answer.get("error", "refused")))
        return answer, response.headers.get("server-timing", "")

    def _read_answer(self, org: str, response: httpx.Response) -> bytes:
        """The answer's bytes, read only up to `max_answer`: a peer cannot exhaust our memory."""
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_answer:
            raise ExchangeError(org, 0, f"answer of {declared} bytes, over {self.max_answer}")
        parts: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > self.max_answer:
                raise ExchangeError(org, 0, f"answer over {self.max_answer} bytes")
            parts.append(chunk)
        return b"".join(parts)

    # -- what a hospital asks --------------------------------------------------------------
    def _ask(self, pid: str, purpose: str, study: str | None, **more: Any) -> dict[str, Any]:
        # The height this hospital's replica has reached: the custodian answers from a state
        # at least as recent (see Gateway._catch_up).
        height = self.node.engine.height()
        body: dict[str, Any] = {"pid": pid, "purpose": purpose, "height": height, **more}
        if study is not None:
            body["study"] = study  # a research access names its study
        return body

    def index(
        self, custodian: str, pid: str, purpose: str = "treatment", study: str | None = None
    ) -> list[dict[str, Any]]:
        """The patient's entries at `custodian` that this caller may see, metadata opened."""
        answer, _ = self.post(custodian, "index", self._ask(pid, purpose, study))
        entries: list[dict[str, Any]] = answer["entries"]
        return entries

    def fetch(
        self,
        custodian: str,
        pid: str,
        rids: list[str],
        purpose: str = "treatment",
        study: str | None = None,
    ) -> Fetched:
        """Records from their custodian, each checked against its commitment on the ledger."""
        answer, _ = self.post(custodian, "records", self._ask(pid, purpose, study, rids=rids))
        return self.check_records(custodian, pid, answer)

    def check_records(self, custodian: str, pid: str, answer: dict[str, Any]) -> Fetched:
        out = []
        for rec in answer.get("records", []):
            versions = queries.record_versions(self.node.engine, rec["rid"])
            commitment = verify_fetched(versions, rec, custodian, pid)
            out.append(
                FetchedRecord.from_wire(rec, custodian, pid, str(rec.get("basis", "")), commitment)
            )
        return Fetched(out, list(answer.get("denied", [])), list(answer.get("missing", [])))

    def metadata_key(
        self, custodian: str, pid: str, purpose: str = "treatment", study: str | None = None
    ) -> dict[int, dict[str, bytes]]:
        """The custodian's metadata keys for this patient, {epoch: {category: key}}, of the
        categories it grants this caller (indexing.py), opened with this hospital's box key."""
        answer, _ = self.post(custodian, "metadata-key", self._ask(pid, purpose, study))
        sealed = base64.b64decode(answer["sealed"])
        opened = SealedBox(PrivateKey(self.node.config.box_key())).decrypt(sealed)
        try:
            keys = cbor2.loads(opened)
        except (cbor2.CBORDecodeError, ValueError):
            keys = None
        if (
            not isinstance(keys, dict)
            or not keys
            or not all(
                isinstance(epoch, int)
                and isinstance(of_epoch, dict)
                and 0 < len(of_epoch) <= len(CATEGORIES)
                and all(c in CATEGORY_SET for c in of_epoch)
                and all(isinstance(k, bytes) and len(k) == 32 for k in of_epoch.values())
                for epoch, of_epoch in keys.items()
            )
        ):
            raise IntegrityError(
                custodian, 0, "the metadata keys are not {epoch: {category: 32 bytes}}"
            )
        return {int(e): {str(c): bytes(k) for c, k in ks.items()} for e, ks in keys.items()}

    def deliver(self, receiver: str, payload: dict[str, Any]) -> dict[str, Any]:
        answer, _ = self.post(receiver, "deliveries", payload)
        return answer

    def warm(self, orgs: Iterable[str]) -> None:
        """A pooled connection to each of `orgs`, its TLS handshake done, opened now, all at
        once (`health`, which carries nothing): the posts that follow find it. A study
        answer warms its co-answerers' while it reads its records, so that its partials do
        not pay a client, a handshake and the server's pins on their path. Failures are
        left to the posts (they report and retry them)."""

        def one(org: str) -> None:
            try:
                self._client(org).get(f"{PREFIX}/health").read()
            except Exception as exc:  # noqa: BLE001 - the post that follows says it
                log.debug("%s: warming %s: %s", self.org, org, exc)

        threads = [threading.Thread(target=one, args=(o,), daemon=True) for o in orgs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def study_partials(
        self, receiver: str, query_id: str, patients: list[list[Any]]
    ) -> dict[str, Any]:
        """A study query's partial facts for the patients the receiver counts
        (node/study_partials.py): `patients` is [[pid, facts object], ...], maybe empty."""
        body = {"query": query_id, "height": self.node.engine.height(), "patients": patients}
        answer, _ = self.post(receiver, "study-partials", body)
        return answer

    # -- custody of this hospital's replicas at peers (node/custody.py) ------------------------
    def custody_put(self, holder: str, items: list[Item]) -> int:
        """Store items at `holder` (all or none); returns the bytes this hospital holds there."""
        payload = {
            "items": [
                {
                    "id": it.id,
                    "version": it.version,
                    "sha256": it.sha256.hex(),
                    "blob": base64.b64encode(it.blob).decode(),
                }
                for it in items
            ]
        }
        answer, _ = self.post(holder, "custody-put", payload)
        return int(answer.get("usage", 0))

    def custody_drop(self, holder: str, ids: list[str]) -> bytes:
        """Drop items at `holder` (to its trash, custody_grace_days); returns its receipt,
        checked against its key on the chain (IntegrityError when not the holder's)."""
        answer, _ = self.post(holder, "custody-drop", {"ids": ids})
        return self._receipt(holder, ids, answer)

    def custody_purge(self, holder: str, pid: str, proof: bytes) -> tuple[bytes, bool]:
        """Destroy at `holder`, trash included, the wrapped key item of `pid`, which the
        chain says this hospital shredded: (its signed receipt, whether it held the item)."""
        answer, _ = self.post(holder, "custody-purge", {"pid": pid, "proof": proof.hex()})
        receipt = self._receipt(holder, [key_item_id(self.org, pid, proof)], answer)
        return receipt, bool(answer.get("purged"))

    def custody_empty_trash(self, holder: str) -> int:
        """Destroy at `holder` what keys other than this one trashed (after a rebinding)."""
        answer, _ = self.post(holder, "custody-empty-trash", {})
        return int(answer.get("purged", 0))

    def _receipt(self, holder: str, ids: list[str], answer: dict[str, Any]) -> bytes:
        receipt = base64.b64decode(str(answer.get("receipt", "")))
        message = drop_receipt_message(holder, self.org, ids)
        key = next((m["key"] for m in queries.members(self.node.engine) if m["org"] == holder), b"")
        if not verify(bytes(key), message, receipt):
            raise IntegrityError(holder, 0, "the drop receipt is not signed by the holder's key")
        return receipt

    def custody_list(self, holder: str, *, trash: bool = False) -> tuple[list[ItemInfo], int]:
        """Every item this hospital holds at `holder` (all pages) and the bytes they take;
        with `trash`, every version in its trash there (ItemInfo.trash numbers them)."""
        found: list[ItemInfo] = []
        after: str | int = 0 if trash else ""
        usage = 0
        while True:
            answer, _ = self.post(holder, "custody-list", {"after": after, "trash": trash})
            page = [
                ItemInfo(
                    str(i["id"]),
                    int(i["version"]),
                    bytes.fromhex(i["sha256"]),
                    int(i["size"]),
                    int(i["trash"]) if trash else 0,
                )
                for i in answer.get("items", [])
            ]
            keys: list[Any] = [i.trash if trash else i.id for i in page]
            if any(b <= a for a, b in zip([after, *keys], keys, strict=False)):
                # a holder that repeats or reorders its pages would keep us asking for ever
                raise ExchangeError(holder, 0, "custody-list: ids not rising past the last page")
            found += page
            usage = int(answer.get("usage", 0))
            if not answer.get("more") or not page:
                return found, usage
            after = keys[-1]

    def custody_get(self, holder: str, ids: list[str]) -> list[Item]:
        """The items named, as `holder` returns them (the caller checks them: a holder may lie);
        ids it holds but left for later are asked again."""
        return [item for _, item in self._custody_get(holder, "ids", ids)]

    def custody_get_trashed(self, holder: str, numbers: list[int]) -> dict[int, Item]:
        """Trashed versions at `holder` by their trash number (checked by the caller)."""
        return dict(self._custody_get(holder, "trash", numbers))

    def _custody_get(self, holder: str, field: str, keys: list[Any]) -> list[tuple[Any, Item]]:
        out: list[tuple[Any, Item]] = []
        pending = list(keys)
        while pending:
            batch, pending = pending[:MAX_ITEMS], pending[MAX_ITEMS:]
            answer, _ = self.post(holder, "custody-get", {field: batch})
            asked = set(batch)
            got: list[tuple[Any, Item]] = []
            for i in answer.get("items", []):
                key = i.get("trash") if field == "trash" else i.get("id")
                item = Item(
                    str(i["id"]),
                    int(i["version"]),
                    bytes.fromhex(i["sha256"]),
                    base64.b64decode(i["blob"]),
                )
                if key in asked:  # only what was asked: each once
                    asked.discard(key)
                    got.append((key, item))
            served = {key for key, _ in got}
            said_later = set(answer.get("later", []))
            later = [k for k in batch if k in said_later and k not in served]
            if later and not served:
                raise ExchangeError(holder, 0, "custody-get returned nothing and asked for later")
            out += got
            pending = later + pending
        return out

    # -- event stream ------------------------------------------------------------------------
    def events(
        self,
        org: str,
        *,
        from_height: int | None = None,
        last_event_id: str | None = None,
        timeout: float | None = None,
    ) -> Generator[dict[str, Any], None, None]:
        """Events from a node's stream, as dicts with `id`, `event` and decoded `data`.

        Signed like every request; the stream stays open until the caller stops iterating.
        """
        path = f"{PREFIX}/events" + (f"?from={from_height}" if from_height is not None else "")
        headers = self.signer.headers("GET", path, b"", org)
        headers["accept"] = "text/event-stream"
        if last_event_id is not None:
            headers["last-event-id"] = last_event_id
        client = self._client(org)
        read_timeout = httpx.Timeout(timeout or self._timeout, connect=5.0)
        with client.stream("GET", path, headers=headers, timeout=read_timeout) as response:
            self._check_server(org, response)
            if response.status_code != 200:
                response.read()
                raise ExchangeError(org, response.status_code, response.text[:200])
            yield from parse_sse(response.iter_lines())


def parse_sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Server-Sent Events framing: fields until a blank line; comments (pings) skipped."""
    event: dict[str, Any] = {}
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                event["data"] = orjson.loads("\n".join(data))
                yield event
            event, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name in ("id", "event", "retry"):
            event[name] = value
