"""Review of session 8's study queries (issue 18): the pairwise masks need every pair's key
agreement to be the same on both sides for the whole query. A member that rotates its box key
(`governance.update_member`, or a rebinding after a lost machine) while a query runs broke
that: its peers that answered before used the old key, those after the new one, the masks
stayed in the sum, and a wrong result was published as done, looking right."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from medledger.contracts import study_query as sq
from medledger.ledger.errors import Code
from medledger.research import masks
from medledger.research.answer import box_publics
from tests.contracts.test_study_queries import QUERY, _answer, _run, _submit, _world


def _box() -> tuple[bytes, bytes]:
    """A box key pair (secret, public), raw."""
    secret = X25519PrivateKey.generate()
    raw = secret.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return raw, secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_an_answerer_whose_box_key_changed_since_the_start_is_refused() -> None:
    w = _world()
    assert _submit(w).ok
    record = _run(w)
    assert set(record["box_keys"]) == {"h0", "h1", "h2"}
    n = len(sq.cells(sq.parse(QUERY)))
    assert _answer(w, "h0", [0] * n, 0).ok
    _, new_public = _box()
    w.ok("h2", "governance.update_member", {"box_key": new_public})
    refused = _answer(w, "h2", [0] * n, 0)
    assert refused.code == Code.CONFLICT and "box key changed" in refused.log
    assert _answer(w, "h1", [0] * n, 0).ok
    done = w.q("research/query", {"query": "s1/q0001"})
    assert done["status"] == "running" and "result" not in done  # incomplete, not wrong


def test_masks_agreed_from_the_start_keys_cancel_after_a_peer_rotates() -> None:
    orgs = ["h0", "h1", "h2"]
    boxes = {o: _box() for o in orgs}
    at_start = {o: public for o, (_, public) in boxes.items()}
    before = [{"org": o, "box_key": k} for o, k in at_start.items()]
    after = [{"org": o, "box_key": _box()[1] if o == "h2" else k} for o, k in at_start.items()]
    query_id = "s1/q0001"

    def answer_mask(org: str, members: list[dict[str, Any]], fixed: dict[str, bytes]) -> list[int]:
        pairs = masks.seed_pairs(org, boxes[org][0], box_publics(fixed, members), orgs)
        return masks.mask(pairs, query_id, 4)

    # h0 answers before h2 rotates its key, h1 and h2 after (h2 with its start key's secret).
    pinned = [answer_mask("h0", before, at_start)] + [
        answer_mask(o, after, at_start) for o in ("h1", "h2")
    ]
    assert masks.unmask_sum(pinned) == [0, 0, 0, 0]
    # Reading the members' keys at answer time, as before: masks were left in the sum.
    unpinned = [answer_mask("h0", before, {})] + [answer_mask(o, after, {}) for o in ("h1", "h2")]
    assert masks.unmask_sum(unpinned) != [0, 0, 0, 0]
