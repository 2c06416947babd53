"""Review 11b: the sponsor's timeout_commit in its bootstrap answer (fix11b).

docs/deploy.md tells each operator to set `[consensus] timeout_commit` in config.toml by
hand; CometBFT reads any Go duration there ("0.6s", "1s500ms"). The sponsor's bootstrap
answer reads it back with `testnet.timeout_commit_of` (exchange/bootstrap.py `_cometbft`),
which knows only "<N>ms" and "<N>s": on any other spelling the bootstrap answer fails
whole, and no hospital can join through that node."""

from __future__ import annotations

from pathlib import Path

import pytest

from medledger.consensus.cometbft import testnet


@pytest.mark.parametrize(("written", "ms"), [("0.6s", 600), ("1s500ms", 1500), ("1m", 60_000)])
def test_review11b_a_sponsor_whose_timeout_commit_is_any_go_duration_still_answers(
    tmp_path: Path, written: str, ms: int
) -> None:
    sponsor = tmp_path / "sponsor"
    testnet._init_home(sponsor)
    testnet._configure(sponsor, {"consensus": {"timeout_commit": written}})
    assert testnet.timeout_commit_of(sponsor) == ms
