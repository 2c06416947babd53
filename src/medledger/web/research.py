"""The researcher's page: the studies this hospital sponsors, their federated queries (status,
approvals, who contributed what), the queries awaiting this hospital's approval (its DPO reads
the document before `study query approve`), and a query's page: document, approvals,
contributors, and once done the result tables with a chart.

Everything shown is on the chain already (queries, answers and results are public to the
members) except the study titles, which the sponsor keeps (`node.notes`). Still, the page is
for this hospital's researchers and DPOs only (a practitioner with one of those roles, on the
chain, now). A suppressed figure is written "suppressed" and drawn as a hatched bar: never 0.
A noised figure clamped to its bound reads "3.000 (clamped)", set apart, and the result says
which figures were clamped and why (`study_results.clamped`). The charts draw counts and
histogram bins only, which are never shown clamped (a bin noise took below 0 is under k).

The charts are SVG written on the server (`Chart`): each has a title and a description that
lists every bar's value, so a screen reader reads what the eye sees.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from medledger.api.services import HospitalServices
from medledger.api.tokens import Claims
from medledger.contracts import queries
from medledger.interop import study_results
from medledger.web.auth import guard_post, login_form, services, signed_in
from medledger.web.render import message, render

#: Roles that see the research page: who submits queries, and who approves them.
ROLES = frozenset({"researcher", "dpo"})
_WIDTH, _HEIGHT, _LEFT, _BOTTOM, _TOP = 400, 200, 44, 40, 16


@dataclass(frozen=True)
class BarView:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: int | None
    text: str  # the value as read: a number or "suppressed"
    label_x: float


@dataclass(frozen=True)
class Chart:
    """One SVG chart: geometry computed here, markup in the template."""

    ident: str
    title: str
    description: str
    width: int
    height: int
    top: int
    base: float
    left: int
    high: int  # the top of the scale; 0 when every bar is suppressed (no scale drawn)
    bars: tuple[BarView, ...]


def chart(series: study_results.Series, ident: str) -> Chart:
    """Bars scaled to the largest released value; a suppressed bar fills the plot's height,
    hatched, with no number on it."""
    values = [b.value for b in series.bars if b.value is not None]
    high = max(values, default=0)
    plot_h = _HEIGHT - _TOP - _BOTTOM
    step = (_WIDTH - _LEFT - 8) / max(len(series.bars), 1)
    base = float(_HEIGHT - _BOTTOM)
    bars = []
    for i, bar in enumerate(series.bars):
        x = _LEFT + i * step + step * 0.1
        h = plot_h if bar.value is None else plot_h * bar.value / max(high, 1)
        text = study_results.SUPPRESSED if bar.value is None else str(bar.value)
        bars.append(
            BarView(
                round(x, 1),
                round(base - h, 1),
                round(step * 0.8, 1),
                round(h, 1),
                bar.label,
                bar.value,
                text,
                round(x + step * 0.4, 1),
            )
        )
    listed = "; ".join(f"{b.label}: {b.text}" for b in bars)
    return Chart(
        ident,
        series.title,
        f"{series.description}. {listed}.",
        _WIDTH,
        _HEIGHT,
        _TOP,
        base,
        _LEFT,
        high,
        tuple(bars),
    )


def refusal(svc: HospitalServices, claims: Claims | None) -> str | None:
    """None when this caller may see the page; else why not ("" when nobody is signed in)."""
    if claims is None:
        return ""
    kind, _, ident = claims.subject.partition("/")
    if kind != "Practitioner" or claims.patient is not None:
        return "the research page is for this hospital's researchers and DPOs"
    key = svc.practitioner_key(claims)
    actor = None if key is None else queries.actor_of_key(svc.node.engine, key)
    if actor is None or actor["org"] != svc.org or actor["practitioner"] != ident:
        return f"{claims.subject} is not a practitioner of {svc.org}"
    if not actor["active"]:
        return f"practitioner {svc.org}/{ident} is revoked"
    if not ROLES.intersection(actor["roles"]):
        return f"practitioner {svc.org}/{ident} is neither a researcher nor a DPO"
    return None


def _status(record: dict[str, Any], now_ms: int) -> str:
    """The status as a reader should take it: a running query past its deadline is
    incomplete, whatever the last block said."""
    status = str(record.get("status", ""))
    deadline = int(record.get("deadline_ms") or 0)
    if status == "running" and deadline and now_ms > deadline:
        return "incomplete"
    return status


def _awaits(record: dict[str, Any], org: str) -> bool:
    """Whether a submitted query awaits this hospital's approval (`ethics:` or `custodian:`)."""
    return any(str(a).partition(":")[2] == org for a in record.get("awaited") or [])


def _summary(record: dict[str, Any], now_ms: int) -> dict[str, Any]:
    answered = study_results.answers(record)
    return {
        "id": record["id"],
        "status": _status(record, now_ms),
        "approvals": study_results.approvals(record),
        "answerers": list(record.get("answerers") or []),
        "answered": answered,
        "patients": sum(a.patients for a in answered),
        "awaited": list(record.get("awaited") or []),
    }


def router() -> APIRouter:
    """The studies page and one query's page."""
    routes = APIRouter(dependencies=[Depends(guard_post)])

    @routes.get("/research")
    def research(request: Request) -> Response:
        from medledger.node.notes import NoteStore, title_of_study

        svc = services(request)
        claims = signed_in(request)
        why = refusal(svc, claims)
        if why is not None:
            return login_form(request, "/research", why)
        engine = svc.node.engine
        notes = NoteStore(svc.node.config.home)
        now = int(time.time() * 1000)
        studies, awaiting = [], []
        for study in queries.studies(engine):
            # The list carries no answers nor documents: each query is read whole.
            records = [
                queries.study_query(engine, str(r["id"])) or r
                for r in queries.study_queries(engine, str(study["id"]))
            ]
            awaiting += [_summary(r, now) for r in records if _awaits(r, svc.org)]
            if study["sponsor"] == svc.org:
                studies.append(
                    {
                        **study,
                        "title": title_of_study(notes, study),
                        "queries": [_summary(r, now) for r in records],
                    }
                )
        return render(
            request, "research.html", "Research", studies=studies, awaiting=awaiting, org=svc.org
        )

    @routes.get("/research/query")
    def query(request: Request, id: str = "") -> Response:
        svc = services(request)
        claims = signed_in(request)
        why = refusal(svc, claims)
        if why is not None:
            return login_form(request, f"/research/query?id={id}", why)
        record = queries.study_query(svc.node.engine, id) if id else None
        study = None if record is None else queries.study(svc.node.engine, str(record["study"]))
        concerned = record is not None and (
            svc.org in (record.get("answerers") or []) or _awaits(record, svc.org)
        )
        if record is None or study is None or not (study["sponsor"] == svc.org or concerned):
            return message(
                request,
                "Study query",
                f"no query {id!r} that {svc.org} sponsors, approves or answers",
                404,
            )
        result = record.get("result")
        doc = record.get("doc") or {}
        tables = study_results.tables(doc, result) if result is not None else []
        series = study_results.charts(doc, result) if result is not None else []
        return render(
            request,
            "research_query.html",
            f"Study query {record['id']}",
            q=_summary(record, int(time.time() * 1000)),
            record=record,
            document=json.dumps(doc, indent=2, ensure_ascii=False),
            digest=bytes(record.get("hash") or b"").hex(),
            result=result,
            tables=tables,
            charts=[chart(s, f"chart-{i}") for i, s in enumerate(series)],
            suppressed=study_results.SUPPRESSED,
            clamped_mark=study_results.CLAMPED,
            clamped=study_results.clamped(doc, result) if result is not None else [],
            caveat=study_results.caveat(result) if result is not None else None,
            uncounted=study_results.uncounted(record),
        )

    return routes
