"""Four hospitals on CometBFT, each a `medledger node run`, answer a study query by themselves.

The test acts as the hospitals' people (ingestion, enrolment on the portal, the researcher,
the DPOs) through clients of the running nodes; each node's study agent sees the query run,
exchanges partial facts over mTLS and posts its masked answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest

from medledger.consensus.cometbft import processes
from medledger.node import Node
from medledger.provisioning import create_consortium
from medledger.vault import Vault
from tests.support.studies import HBA1C_QUERY, Study, truth_hba1c

pytestmark = [
    pytest.mark.cometbft,
    pytest.mark.timeout(300),
    pytest.mark.usefixtures("cometbft_binary"),  # fails if CometBFT is not built
]


@pytest.fixture
def study(tmp_path: Path) -> Iterator[Study]:
    directory = tmp_path / "net"
    homes = create_consortium(
        directory,
        4,
        engine="cometbft",
        chain_id="medledger-study-test",
        block_time_ms=200,
        genesis_time_ms=int(time.time() * 1000),
    )
    processes.up(directory, timeout=60)
    nodes: dict[str, Node] = {}
    vaults: dict[str, Vault] = {}
    try:
        for home in homes:
            node = Node.open(home)  # a client of the running node
            nodes[node.config.org] = node
            vaults[node.config.org] = Vault.open(node.config.vault_config())
        yield Study(nodes, vaults)
    finally:
        for vault in vaults.values():
            vault.close()
        for node in nodes.values():
            node.close()
        processes.down(directory)


def test_the_nodes_answer_by_themselves_and_count_each_patient_once(study: Study) -> None:
    study.load(12, seed=11)
    study.register(["labs"], budget_milli=1000)
    labels = sorted(study.pid)
    enrolled = labels[:-2]  # two patients never enrol
    for label in enrolled:
        study.enrol(label)
    # One patient with an HbA1c, followed in two hospitals or more, withdraws: never counted.
    withdrawn = next(
        label
        for label in enrolled
        if len(study.holders[label]) >= 2 and truth_hba1c(study.by_label[label])
    )
    study.withdraw(withdrawn)
    counted = [label for label in enrolled if label != withdrawn]
    assert any(len(study.holders[label]) >= 2 for label in counted)  # counted once each
    query_id = study.run(HBA1C_QUERY)
    record = study.done(query_id, timeout=120)

    values = [v[1] for label in counted if (v := truth_hba1c(study.by_label[label]))]
    (row,) = record["result"]["strata"]
    if len(values) >= record["result"]["k"]:
        assert row["count"] == len(values)
        assert Fraction(row["mean"]) == Fraction(round(Fraction(sum(values), len(values))), 1000)
    else:
        assert row["count"] is None  # suppressed, and said so
    assert sum(a["patients"] for a in record["answers"].values()) == len(counted)
