"""What the last answerer of a study query can learn before it answers (issue 18, session 9;
docs/security.md, "The last answerer").

It holds its own pair seeds, so from the others' masked answers on the chain it computes
their sum (noised: each added its own full noise) before posting its own; that is what
everyone computes from the chain once it answers. It cannot read any single other
hospital's answer, nor any two of three: their pairs' masks with the third stay in."""

from __future__ import annotations

from itertools import combinations

from nacl.public import PrivateKey

from medledger.research import masks

ORGS = ["aphp-paris", "chu-bordeaux", "chu-lille", "chu-lyon"]
QUERY = "lyon-2026-007/q0003"
PLAIN = {
    "aphp-paris": [14, 1022, 3, 0],
    "chu-bordeaux": [9, 640, 0, 2],
    "chu-lille": [0, 0, 0, 0],
    "chu-lyon": [21, 1800, 5, 1],
}
LAST = "chu-lyon"


def test_the_last_answerer_reads_the_others_sum_but_no_single_answer() -> None:
    keys = {org: PrivateKey.generate() for org in ORGS}
    publics = {org: bytes(k.public_key) for org, k in keys.items()}
    n = len(PLAIN[LAST])
    posted = {
        org: masks.masked(
            PLAIN[org],
            masks.mask(masks.seed_pairs(org, bytes(keys[org]), publics, ORGS), QUERY, n),
        )
        for org in ORGS
        if org != LAST
    }
    # The last one's own mask is minus the others' together: adding it to their answers
    # leaves their plain sum, before it posts anything.
    own = masks.mask(masks.seed_pairs(LAST, bytes(keys[LAST]), publics, ORGS), QUERY, n)
    others = [PLAIN[o] for o in posted]
    assert masks.unmask_sum([*posted.values(), own]) == [sum(c) for c in zip(*others, strict=True)]

    # What it can take off a group of the others' answers: its own pairs' masks with each.
    def best_guess(group: tuple[str, ...]) -> list[int]:
        taken_off = [
            masks.mask(
                [(-1 if o < LAST else 1, masks.seed(bytes(keys[LAST]), publics[o]))], QUERY, n
            )
            for o in group
        ]
        return masks.unmask_sum([*(posted[o] for o in group), *taken_off])

    def truth(group: tuple[str, ...]) -> list[int]:
        return [sum(c) for c in zip(*(PLAIN[o] for o in group), strict=True)]

    assert best_guess(tuple(posted)) == truth(tuple(posted))  # all three: the same sum
    # Any one other answer, or any two: the masks of their pairs with the third stay in.
    for size in (1, 2):
        for group in combinations(posted, size):
            guess = best_guess(group)
            assert guess != truth(group), group
            assert all(abs(x) > 2**32 for x in guess), group  # uniform noise, not a count
