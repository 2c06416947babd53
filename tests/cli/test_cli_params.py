"""`medledger member propose param` and `member params`: the consortium parameters (study
queries' k, DPO approval, answer time, epsilon floor, budget cap...) changed by the members'
vote, with a mistake refused before any proposal is made."""

from __future__ import annotations

from pathlib import Path

from tests.cli.test_cli_ledger import run


def _value(home: Path, name: str) -> str:
    for line in run("member", "params", "-H", str(home)).output.splitlines():
        cells = [c.strip() for c in line.replace("│", "|").split("|") if c.strip()]
        if cells and cells[0] == name:
            return str(cells[1])
    raise AssertionError(f"{name} not listed")


def test_members_vote_a_study_parameter_and_a_mistake_makes_no_proposal(tmp_path: Path) -> None:
    net = tmp_path / "net"
    run("init", str(net), "--hospitals", "3")
    lyon, paris = net / "hospitals" / "chu-lyon", net / "hospitals" / "aphp-paris"
    assert _value(lyon, "study_min_cell") == "5"
    listed = run("member", "params", "-H", str(lyon)).output
    assert "2..1000" in listed  # what a vote may give study_min_cell

    unknown = run(
        "member", "propose", "param", "-H", str(lyon), "--name", "study_min_cel",
        "--value", "10", ok=False,
    )  # fmt: skip
    assert unknown.exit_code == 1
    assert "unknown parameter 'study_min_cel'" in unknown.output
    assert "study_min_cell" in unknown.output  # the known ones are named
    too_small = run(
        "member", "propose", "param", "-H", str(lyon), "--name", "study_min_cell",
        "--value", "1", ok=False,
    )  # fmt: skip
    assert too_small.exit_code == 1
    assert "1 is out of range for study_min_cell (2 to 1000)" in too_small.output
    assert "no open proposal" in run("member", "list", "-H", str(lyon)).output

    out = run(
        "member", "propose", "param", "-H", str(lyon), "--name", "study_min_cell",
        "--value", "10", "--note", "k = 10 for the diabetes network",
    )  # fmt: skip
    assert "proposal 1 created (set_param)" in out.output
    assert _value(lyon, "study_min_cell") == "5"  # one vote of three is not two thirds
    out = run("member", "vote", "-H", str(paris), "1")
    assert "proposal 1 reached 2/3 and was executed" in out.output
    assert _value(paris, "study_min_cell") == "10"


def test_an_escrow_threshold_above_the_shares_makes_no_proposal(tmp_path: Path) -> None:
    """k of n: the CLI asks the contract's rule (governance v4) with the values in force."""
    net = tmp_path / "net"
    run("init", str(net), "--hospitals", "3")
    lyon = net / "hospitals" / "chu-lyon"
    listed = run("member", "params", "-H", str(lyon)).output
    assert "escrow_threshold at most escrow_shares" in listed
    crossed = run(
        "member", "propose", "param", "-H", str(lyon), "--name", "escrow_threshold",
        "--value", "4", ok=False,
    )  # fmt: skip
    assert crossed.exit_code == 1
    assert "escrow_threshold would be 4 and escrow_shares 3" in crossed.output
    assert "no open proposal" in run("member", "list", "-H", str(lyon)).output
