"""A document Bundle goes to another hospital whole, or not at all: the caller must be allowed
every category of its entries, not only `documents` (the category it is indexed under)."""

from __future__ import annotations

import pytest

from medledger.exchange.client import ExchangeError
from medledger.node.ingest import Ingestor
from tests.support.documents import INS, INS_SYSTEM, ips, send

from .conftest import A, B, Sandbox, wait_for


def test_a_document_is_served_only_to_who_may_see_each_of_its_entries(
    sandbox: Sandbox,
) -> None:
    at_a = sandbox.h[A]
    result = send(Ingestor(at_a.node, at_a.vault), ips("a", [(INS_SYSTEM, INS)]), "ips-a.json")
    assert result.rejections == [], result.rejections
    (pid,) = result.pids
    rids = {at_a.vault.info(r).resource_type: r for r in result.rids}
    document, condition = rids["Bundle"], rids["Condition"]

    # Documents and conditions, but not the allergies and medications the summary also holds.
    sandbox.consent(A, pid, B, categories=["conditions", "documents"])
    client = sandbox.x(B).client
    fetched = wait_for(lambda: client.fetch(A, pid, [condition]).records, what="the condition at B")
    assert [r.rid for r in fetched] == [condition]
    with pytest.raises(ExchangeError, match="the document holds allergies records"):
        client.fetch(A, pid, [document])
    assert document not in {e["rid"] for e in client.index(A, pid)}

    sandbox.consent(A, pid, B, categories=["*"])  # now every category: the document whole
    whole = wait_for(lambda: client.fetch(A, pid, [document]).records, what="the document")
    assert [r.rid for r in whole] == [document]
