"""Review 12c: the tally's enrolments (ahead18 took them from the plan's view; now read again).

The plan is read when the query runs; the tally comes after the co-answerers' messages,
which it waits for up to the query's deadline. Before ahead18 the tally read the chain
again (`counted_now`) for every patient it counted, so a patient who withdrew from the study
(or asked for erasure) while the hospital waited was not counted: withdrawals take effect
at once (docs/security.md). Now the plan's own patients are counted without that read.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, cast

import pytest

from medledger.research import answer
from medledger.research.answer import Answerer, Plan


class _Engine:
    """A replica whose committed view has every patient withdrawn (`counted_now` says so)."""

    @contextmanager
    def read_view(self) -> Iterator[object]:
        yield object()


def test_a_patient_who_withdrew_while_the_answer_waited_for_partials_is_not_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[set[str]] = []

    def counted_now(_state: Any, _study: str, pids: Any) -> set[str]:
        asked.append(set(pids))
        return set()  # anne withdrew after the plan was read

    monkeypatch.setattr(answer, "counted_now", counted_now)
    answerer = Answerer.__new__(Answerer)
    answerer.org = "h0"
    answerer.node = cast(Any, SimpleNamespace(engine=_Engine()))
    plan = Plan("q-1", "st-1", cast(Any, None), (), ["h0", "h1"], 0, b"", {"anne": "h0"})
    assert answerer._counted(plan, {"anne"}, set()) == set(), asked
