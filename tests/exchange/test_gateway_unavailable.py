"""A custodian whose CometBFT is gone answers a peer 503 with the reason, never from a replica
that may be stale (a consent withdrawn meanwhile); it serves again as soon as it is back."""

from __future__ import annotations

import pytest

from medledger.exchange.client import ExchangeError

from .conftest import A, B, Sandbox, bundles

GONE = "this node's CometBFT (http://127.0.0.1:1) does not answer (RpcUnavailable)"


def test_a_custodian_without_its_cometbft_answers_503_then_serves_again(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid, _ = sandbox.ingest(A, bundles(1)[0])
    sandbox.consent(A, pid, B)
    client = sandbox.x(B).client
    assert client.index(A, pid, "treatment")  # served
    probe = sandbox.h[A].node.health
    monkeypatch.setattr(probe, "unavailable", lambda: GONE)
    with pytest.raises(ExchangeError) as refused:
        client.index(A, pid, "treatment")
    assert refused.value.status == 503 and GONE in str(refused.value)
    monkeypatch.undo()  # CometBFT is back
    assert client.index(A, pid, "treatment")
