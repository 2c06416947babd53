"""The pairwise masks hide each hospital's answer and cancel in the sum."""

from __future__ import annotations

from nacl.public import PrivateKey

from medledger.research import masks

ORGS = ["aphp-paris", "chu-bordeaux", "chu-lille", "chu-lyon"]


def _keys() -> dict[str, PrivateKey]:
    return {org: PrivateKey.generate() for org in ORGS}


def _answers(
    keys: dict[str, PrivateKey], plain: dict[str, list[int]], query: str
) -> list[list[int]]:
    publics = {org: bytes(k.public_key) for org, k in keys.items()}
    out = []
    for org in ORGS:
        pairs = masks.seed_pairs(org, bytes(keys[org]), publics, ORGS)
        out.append(masks.masked(plain[org], masks.mask(pairs, query, len(plain[org]))))
    return out


def test_the_masked_answers_sum_to_the_plain_sum_and_each_alone_looks_random() -> None:
    keys = _keys()
    plain = {
        "aphp-paris": [12, 0, 7, -3],
        "chu-bordeaux": [5, 1, 0, 0],
        "chu-lille": [0, 0, 0, 0],
        "chu-lyon": [30, 2, 1, 4],
    }
    answers = _answers(keys, plain, "b-2026-001/q0001")
    assert masks.unmask_sum(answers) == [47, 3, 8, 1]
    # A hospital that holds nobody still posts numbers nobody can tell from another's.
    lille = answers[ORGS.index("chu-lille")]
    assert all(cell > 2**32 for cell in lille)
    assert all(0 <= cell < 2**64 for a in answers for cell in a)


def test_both_sides_of_a_pair_derive_the_same_seed_and_queries_get_other_masks() -> None:
    keys = _keys()
    a, b = keys["aphp-paris"], keys["chu-lyon"]
    assert masks.seed(bytes(a), bytes(b.public_key)) == masks.seed(bytes(b), bytes(a.public_key))
    pairs = [(1, masks.seed(bytes(a), bytes(b.public_key)))]
    assert masks.mask(pairs, "s/q0001", 4) != masks.mask(pairs, "s/q0002", 4)
    assert masks.mask(pairs, "s/q0001", 4) == masks.mask(pairs, "s/q0001", 4)


def test_a_missing_answer_leaves_the_sum_masked() -> None:
    keys = _keys()
    plain = {org: [1, 2, 3] for org in ORGS}
    answers = _answers(keys, plain, "s/q0001")
    assert masks.unmask_sum(answers[:3]) != [3, 6, 9]
