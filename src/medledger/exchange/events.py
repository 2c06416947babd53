"""The event stream: what happened on the ledger that the caller may see, as Server-Sent Events.

Events are not stored anywhere new: they are read back from the committed blocks (each tx's
result events, then the block's own end-of-block events), so the stream needs no state of its
own and survives a restart of the node by construction. Each event's id is
`<height>-<position>`, position counting every event of the block in order (visible to this
caller or not), so an id names the same event for every caller and for ever. A client resumes
with `Last-Event-ID: <h>-<p>` (what browsers send on reconnecting: everything after that event)
or `?from=<h>` (everything from block h on); without either the stream starts at the next
block. Nothing is lost, nothing repeated.

What a caller may see:
    a patient                 the events about their own pid
    a hospital or one of      events naming their hospital (custodian, grantee, holder, from,
    its practitioners         to, ...), events about a patient their hospital holds records or
                              copies of, or is entitled to, and consortium-wide events that
                              name no patient (governance, policies, studies)

Notifications are such events: `emergency.notify`, `consent.notify`, `study.notify`,
`patient.notify` and `records.notify` name the custodian whose DPO must hear of an emergency
opening, of any act a hospital signed in a patient's name, or of a new custodian of one of its
patients (its queue is its stream filtered on those types); `patient.acted_for`,
`consent.self_granted`, `records.custodian_joined`, `erasure.pending` and
`patient.rebind_pending` carry the pid, so the patient's own stream shows them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from medledger.contracts import consent, records, referral
from medledger.exchange.policy import Policy
from medledger.ledger import codec
from medledger.ledger.results import BlockRecord, Event
from medledger.vault import PatientErased

if TYPE_CHECKING:
    from medledger.exchange.gateway import Gateway
    from medledger.node import Node
    from medledger.vault import Vault

#: Attributes whose value is a hospital (or "org:<id>" / "practitioner:<org>/<id>").
ORG_KEYS = ("custodian", "actor_org", "holder", "org", "to", "from", "grantee", "sponsor")


@dataclass(frozen=True)
class Viewer:
    """Who reads a stream: a hospital (optionally one of its practitioners) or a patient."""

    org: str | None = None
    practitioner: str | None = None
    pid: str | None = None


@dataclass(frozen=True)
class StreamEvent:
    height: int
    position: int
    time_ms: int
    type: str
    attrs: dict[str, str]
    tx: str | None  # hex id of the tx that emitted it (None: end of block)

    @property
    def id(self) -> str:
        return f"{self.height}-{self.position}"

    def to_obj(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "height": self.height,
            "position": self.position,
            "time_ms": self.time_ms,
            "type": self.type,
            "attrs": self.attrs,
            "tx": self.tx,
        }


def block_events(record: BlockRecord, types: frozenset[str] | None = None) -> list[StreamEvent]:
    """Every event of a committed block, in order, with its stable position; with `types`,
    only the events of those types (positions still count every event), so a reader that
    wants a few kinds does not build an event for each of a full block's txs."""
    items: list[tuple[int, str | None, Event]] = []
    pos = 0
    for tx, result in zip(record.txs, record.results, strict=True):
        tx_id = None
        for ev in result.events:
            if types is None or ev.type in types:
                tx_id = tx_id or codec.sha256(tx).hex()
                items.append((pos, tx_id, ev))
            pos += 1
    for ev in record.events:
        if types is None or ev.type in types:
            items.append((pos, None, ev))
        pos += 1
    return [
        StreamEvent(record.height, at, record.header.time_ms, ev.type, dict(ev.attrs), tx_id)
        for at, tx_id, ev in items
    ]


def parse_resume(
    last_event_id: str | None, from_height: int | None, current_height: int
) -> tuple[int, int]:
    """(first height, last position already seen in it, -1 for none)."""
    if last_event_id:
        h, sep, p = last_event_id.strip().partition("-")
        if not sep or not h.isdigit() or not p.isdigit():
            raise ValueError(f"Last-Event-ID {last_event_id!r}: expected <height>-<position>")
        return max(1, int(h)), int(p)
    if from_height is not None:
        return max(1, from_height), -1
    return current_height + 1, -1


def _org_of(value: str) -> str:
    kind, sep, rest = value.partition(":")
    if not sep:
        return value
    if kind == "practitioner":
        return rest.split("/", 1)[0].split(":", 1)[0]
    return rest


class Visibility:
    """Decides, on this node's replica (and vault), whether a viewer may see an event."""

    def __init__(self, policy: Policy, vault: Vault | None = None) -> None:
        self.policy = policy
        self.org = policy.node.config.org
        self.vault = vault
        self._cache: dict[tuple[str, str], tuple[float, bool]] = {}

    def concerns(self, org: str, pid: str) -> bool:
        """Does this hospital hold, or is it entitled to, anything of this patient?"""
        now = time.monotonic()
        hit = self._cache.get((org, pid))
        if hit is not None and now - hit[0] < 2.0:
            return hit[1]
        found = self._concerns(org, pid)
        if len(self._cache) > 50_000:
            self._cache.clear()
        self._cache[(org, pid)] = (now, found)
        return found

    def _concerns(self, org: str, pid: str) -> bool:
        """Custodian of a record, grantee of a consent, receiver of a referral, or copy holder.

        A few short range reads on the replica (the contracts' own indexes by patient).
        """
        with self.policy.state() as state:
            if org in records.custodians_of(state, pid):
                return True
            if consent.entries_for(state, pid, f"org:{org}"):
                return True
            if referral.entries_for(state, pid, org):
                return True
        if self.vault is not None and org == self.org:
            try:
                return bool(self.vault.records_of(pid))
            except (PatientErased, ValueError):  # erased, or not a pid
                return False
        return False

    def visible(self, viewer: Viewer, ev: StreamEvent) -> bool:
        pid = ev.attrs.get("pid")
        if viewer.pid is not None:
            return pid == viewer.pid
        if viewer.org is None:
            return False
        if any(_org_of(ev.attrs[k]) == viewer.org for k in ORG_KEYS if k in ev.attrs):
            return True
        if pid is not None:
            return self.concerns(viewer.org, pid)
        return not any(k in ev.attrs for k in ORG_KEYS)  # consortium-wide


class EventStream:
    """Builds SSE responses for viewers; mountable on the gateway or on the hospital's API."""

    def __init__(
        self,
        node: Node,
        vault: Vault | None = None,
        policy: Policy | None = None,
        poll: float = 0.05,
        ping: float = 10.0,
    ) -> None:
        self.node = node
        self.visibility = Visibility(policy or Policy(node), vault)
        self.poll = poll
        self.ping = ping
        self._stop = threading.Event()

    def stop(self) -> None:
        """End every open stream (the node is shutting down)."""
        self._stop.set()

    def _block(self, height: int) -> BlockRecord | None:
        if height > self.node.engine.height():
            return None
        for record in self.node.engine.blocks(height):
            return record if record.height == height else None
        return None

    def _visible(
        self, record: BlockRecord, viewer: Viewer, skip_through: int, types: tuple[str, ...]
    ) -> list[StreamEvent]:
        return [
            ev
            for ev in block_events(record)
            if ev.position > skip_through
            and (not types or ev.type.startswith(types))
            and self.visibility.visible(viewer, ev)
        ]

    async def events(
        self,
        viewer: Viewer,
        start: tuple[int, int],
        types: tuple[str, ...] = (),
        is_disconnected: Callable[[], Any] | None = None,
        allowed: Callable[[], bool] | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """The viewer's events from `start` on, following new blocks until stopped, or until
        `allowed()` says the viewer may no longer read (checked at every block)."""
        height, skip = start
        while not self._stop.is_set():
            record = await anyio.to_thread.run_sync(self._block, height)
            if record is None:
                if is_disconnected is not None and await is_disconnected():
                    return
                await asyncio.sleep(self.poll)
                continue
            if allowed is not None and not await anyio.to_thread.run_sync(allowed):
                return  # removed, or its key rotated away: the stream ends with it
            for ev in await anyio.to_thread.run_sync(self._visible, record, viewer, skip, types):
                yield ev
            height, skip = height + 1, -1

    def response(
        self,
        viewer: Viewer,
        *,
        last_event_id: str | None,
        from_height: int | None,
        types: Iterable[str] = (),
        request: Request | None = None,
        allowed: Callable[[], bool] | None = None,
    ) -> Response:
        """An EventSourceResponse for this viewer, resuming as asked (400 if malformed)."""
        try:
            start = parse_resume(last_event_id, from_height, self.node.engine.height())
        except ValueError as exc:
            return Response(orjson.dumps({"error": str(exc)}), 400, media_type="application/json")
        kinds = tuple(t for t in types if t)

        async def gen() -> AsyncIterator[ServerSentEvent]:
            disconnected = request.is_disconnected if request is not None else None
            async for ev in self.events(viewer, start, kinds, disconnected, allowed):
                yield ServerSentEvent(
                    data=orjson.dumps(ev.to_obj()).decode(), event=ev.type, id=ev.id
                )

        return EventSourceResponse(
            gen(), ping=int(self.ping), headers={"cache-control": "no-store"}
        )

    def mount(self, app: FastAPI, gateway: Gateway) -> None:
        """GET /exchange/v1/events on the gateway: signed like every request."""
        from medledger.exchange.gateway import PREFIX, Refused, json_response, peer_of

        @app.get(PREFIX + "/events")
        async def events(request: Request) -> Response:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            headers = {k.lower(): v for k, v in request.headers.items()}
            try:
                caller = await anyio.to_thread.run_sync(
                    lambda: gateway.authenticate("GET", target, b"", headers, peer_of(request))
                )
            except Refused as exc:
                return json_response({"error": exc.reason}, exc.status)
            raw_from = request.query_params.get("from")
            if raw_from is not None and not raw_from.isdigit():
                return json_response({"error": "from: a block height expected"}, 400)
            viewer = Viewer(caller.actor.org, caller.actor.practitioner)

            def allowed() -> bool:
                """The signing key still names the same active actor in committed state."""
                actor = gateway.policy.actor(caller.request.key)
                return actor is not None and actor.active and actor.org == caller.actor.org

            return self.response(
                viewer,
                last_event_id=headers.get("last-event-id"),
                from_height=int(raw_from) if raw_from is not None else None,
                types=request.query_params.get("types", "").split(","),
                request=request,
                allowed=allowed,
            )
