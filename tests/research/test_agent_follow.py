"""The study agent follows its answer tx to its block without a thread waiting for it.

With a replica in the node, the answering worker only submits the answer
(`Answerer.answer(wait=False)`) and the agent learns its fate at its next step (woken by the
block's `study.query_answered` event): committed, refused by its block, or lost. These tests
drive `StudyAgent._follow` over a scripted engine and wallet: the guarantees `Wallet.send`
gave the waiting thread (a lost tx is sent again with a fresh nonce, a refused one is not
taken for an answer, nothing is answered twice) hold."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from medledger.consensus.engine import Committed, Submitted
from medledger.ledger.errors import Code
from medledger.ledger.results import TxResult
from medledger.node.study_partials import Inbox
from medledger.node.wallet import TxRejected
from medledger.research import agent as agent_module
from medledger.research.agent import StudyAgent
from medledger.research.answer import ANSWER, Answered

QUERY = "s1/q0001"
BODY = {"query": QUERY, "cells": [1, 2, 3], "patients": 7}


class Chain:
    """A chain that commits what it is told to: the answer txs' fates, the signer's nonce."""

    def __init__(self) -> None:
        self.committed: dict[bytes, TxResult] = {}
        self.nonce = 0
        self.answers: dict[str, dict[str, Any]] = {}  # the query record's answers, by org

    def wait_for_commit(self, tx_id: bytes, timeout: float = 30.0) -> Committed:
        if tx_id in self.committed:
            return Committed(tx_id, 5, 0, self.committed[tx_id])
        raise TimeoutError(tx_id.hex())

    def query(self, path: str, data: Any = None) -> Any:
        if path == "ledger/nonce":
            return self.nonce
        if path == "ledger/tx":
            return {"height": 5, "index": 0} if data["id"] in self.committed else None
        if path == "research/query" and data["query"] == QUERY:
            return {"id": QUERY, "answers": self.answers}
        raise AssertionError(path)

    def commit_answer(self, tx_id: bytes, patients: int = 7) -> None:
        """The answer tx commits: the query's record names this hospital's answer."""
        self.committed[tx_id] = TxResult(0)
        self.answers["h0"] = {"patients": patients, "noise_commitment": b"", "tx": tx_id}


class Wallet:
    """Submits to nowhere: records each (kind, body, nonce) and accepts it."""

    public_key = b"k" * 32

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], int]] = []

    def submit_nonce(self, kind: str, body: dict[str, Any]) -> tuple[Submitted, int]:
        nonce = 10 + len(self.sent)
        self.sent.append((kind, body, nonce))
        tx_id = hashlib.sha256(repr((kind, body, nonce)).encode()).digest()
        return Submitted(tx_id, TxResult(0)), nonce


@pytest.fixture
def agent(tmp_path: Path) -> StudyAgent:
    node = SimpleNamespace(
        config=SimpleNamespace(org="h0"),
        app=None,
        engine=Chain(),
        wallet=Wallet(),
        audit=SimpleNamespace(quiet=lambda seconds: None),  # `landed` ends the journal's quiet
    )
    inbox = Inbox(tmp_path / "partials.db", b"s" * 32)
    # Only the node's engine, wallet and journal are used by `_follow`; no vault is read.
    return StudyAgent(cast(Any, node), cast(Any, None), inbox, lambda *a: None)


def chain(agent: StudyAgent) -> Chain:
    return cast(Chain, agent.node.engine)


def wallet(agent: StudyAgent) -> Wallet:
    return cast(Wallet, agent.node.wallet)


def _submitted(agent: StudyAgent, ago: float = 0.0) -> Answered:
    """As the worker leaves it: the answer submitted (nonce 10), not yet committed."""
    submitted, nonce = wallet(agent).submit_nonce(ANSWER, BODY)
    done = Answered(QUERY, 7, {}, submitted.tx_id, {"cpu": 0.1}, body=BODY, nonce=nonce)
    done.submitted = time.perf_counter() - ago
    agent._sent[QUERY] = (done, 0)
    return done


def test_an_answer_seen_committed_is_answered_once_and_its_partials_forgotten(
    agent: StudyAgent,
) -> None:
    agent.answerer.inbox.mark_sent(QUERY, "h1")
    done = _submitted(agent)
    agent._follow()  # not in a block yet: still followed, nothing else sent
    assert QUERY not in agent.answered and QUERY in agent._sent
    chain(agent).committed[done.tx] = TxResult(0)
    agent._follow()
    assert agent.answered[QUERY] is done and "commit" in done.timing
    assert QUERY not in agent._sent
    assert agent.answerer.inbox.queries() == []  # forgotten once on the chain
    assert len(wallet(agent).sent) == 1  # sent once


def test_an_answer_refused_by_its_block_is_tried_again_later_not_taken_for_done(
    agent: StudyAgent,
) -> None:
    done = _submitted(agent)
    chain(agent).committed[done.tx] = TxResult(int(Code.CONFLICT), "already answered")
    agent._follow()
    assert QUERY not in agent.answered and QUERY not in agent._sent
    assert agent._later[QUERY] > time.monotonic()
    assert "refused at execution" in agent.status()[0]


def test_a_lost_answer_is_sent_again_with_a_fresh_nonce_then_given_up(
    agent: StudyAgent,
) -> None:
    first = _submitted(agent, ago=agent_module.LOSS_CHECK_S + 1)
    first_tx = first.tx
    agent._follow()  # the chain's nonce has not reached it: it may still commit
    assert len(wallet(agent).sent) == 1
    chain(agent).nonce = first.nonce  # its nonce passed without it: it never will
    agent._follow()
    assert [n for _, _, n in wallet(agent).sent] == [10, 11]
    assert wallet(agent).sent[1][1] == BODY  # the same answer, not a new one
    again, resends = agent._sent[QUERY]
    assert resends == 1 and again.tx != first_tx
    # Lost each time: after MAX_RESENDS the query is left for a later attempt.
    for _ in range(agent_module.MAX_RESENDS):
        again.submitted -= agent_module.LOSS_CHECK_S + 1
        chain(agent).nonce = again.nonce
        agent._follow()
        again = agent._sent.get(QUERY, (again, 0))[0]
    assert len(wallet(agent).sent) == 1 + agent_module.MAX_RESENDS
    assert QUERY not in agent._sent and QUERY not in agent.answered
    assert agent._later[QUERY] > time.monotonic()


def test_a_lost_answer_found_committed_meanwhile_is_not_sent_again(agent: StudyAgent) -> None:
    done = _submitted(agent, ago=agent_module.LOSS_CHECK_S + 1)
    chain(agent).nonce = done.nonce
    chain(agent).committed[done.tx] = TxResult(0)
    agent._follow()
    assert agent.answered[QUERY] is done
    assert len(wallet(agent).sent) == 1


def test_a_resend_refused_because_the_first_send_committed_reads_answered(
    agent: StudyAgent,
) -> None:
    """A real-world retry: the first answer tx looked lost (its nonce passed, no location
    yet), was resent, and then turned out committed; the resend is refused ("already
    answered"). What the researcher and the DPO read is the truth: answered, by the first tx."""
    first = _submitted(agent, ago=agent_module.LOSS_CHECK_S + 1)
    first_tx = first.tx
    chain(agent).nonce = first.nonce
    agent._follow()  # looks lost: sent again with a fresh nonce
    again, _ = agent._sent[QUERY]
    assert again.tx != first_tx
    chain(agent).commit_answer(first_tx)  # the first one did land, a block later
    chain(agent).committed[again.tx] = TxResult(int(Code.CONFLICT), "field query: answered")
    agent._follow()
    assert agent.answered[QUERY].tx == first_tx
    assert QUERY not in agent._later  # not retried: there is nothing left to do
    status = agent.status()[0]
    assert status == f"study query {QUERY}: answered for 7 patients, tx {first_tx.hex()[:16]}"
    assert "failed" not in status


def test_a_resend_refused_at_check_after_the_first_committed_reads_answered(
    agent: StudyAgent,
) -> None:
    first = _submitted(agent, ago=agent_module.LOSS_CHECK_S + 1)
    first_tx = first.tx
    chain(agent).nonce = first.nonce
    chain(agent).commit_answer(first_tx, patients=9)  # committed, its location not yet known

    def refused(kind: str, body: dict[str, Any]) -> tuple[Submitted, int]:
        wallet(agent).sent.append((kind, body, 11))
        return Submitted(b"r" * 32, TxResult(int(Code.CONFLICT), "already answered")), 11

    chain(agent).committed.pop(first_tx)  # as the node's index had it when it looked
    cast(Any, agent.node.wallet).submit_nonce = refused
    agent._follow()
    assert agent.answered[QUERY].tx == first_tx and agent.answered[QUERY].patients == 9
    assert agent.status() == [
        f"study query {QUERY}: answered for 9 patients, tx {first_tx.hex()[:16]}"
    ]


def test_a_refused_answer_with_none_on_the_chain_still_reads_failed(agent: StudyAgent) -> None:
    done = _submitted(agent)
    chain(agent).committed[done.tx] = TxResult(int(Code.INVALID_BODY), "field cells: 3 cells")
    agent._follow()
    assert QUERY not in agent.answered
    assert agent.status()[0].startswith(f"study query {QUERY}: failed, retried in")


def test_a_waiting_send_refused_after_its_first_try_committed_reads_answered(
    agent: StudyAgent,
) -> None:
    """Without a replica the worker waits in `Wallet.send`, which resends a tx it took for
    lost; the resend's refusal reaches the agent as TxRejected while the chain holds the
    first one: answered, by that tx, not "failed, retried"."""
    first_tx = hashlib.sha256(b"the first answer tx").digest()
    chain(agent).commit_answer(first_tx, patients=4)

    def resent_and_refused(*args: Any, **kwargs: Any) -> Answered:
        raise TxRejected(ANSWER, int(Code.CONFLICT), "h0 already answered", "check")

    cast(Any, agent.answerer).answer = resent_and_refused
    assert agent._answer(QUERY) is agent.answered[QUERY]
    assert agent.answered[QUERY].tx == first_tx
    assert agent.status() == [
        f"study query {QUERY}: answered for 4 patients, tx {first_tx.hex()[:16]}"
    ]
    assert QUERY not in agent._later


def test_an_answer_that_sent_partials_ends_the_journals_quiet_when_it_lands(
    agent: StudyAgent,
) -> None:
    """Its partials' audit entries were kept off the chain while its tx headed for a block."""
    asked: list[float] = []
    cast(Any, agent.node).audit = SimpleNamespace(quiet=asked.append)
    agent.answerer.landed(Answered(QUERY, 7, {"h1": 0, "h2": 3}, b"", {}))
    assert asked == [0]
    agent.answerer.landed(Answered(QUERY, 7, {"h1": 0}, b"", {}))  # nothing sent: not its quiet
    assert asked == [0]
