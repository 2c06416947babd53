"""Review 12b: the key sequences `codec.encode_trusted` remembers are bounded in bytes, not
only in number.

`_ordered_shapes` (new in check13) and `_orders` keep up to 4,096 key sequences each, of any
length: a handler writing maps whose keys come from txs (a 512 KiB tx can carry thousands of
keys) pins up to 4,096 such sequences per cache for the life of the process. `codec._check`
already remembers only maps of at most `_SHAPE_KEYS` keys; the encoder's caches should too.

FAILS on main at e3daea8.
"""

from __future__ import annotations

from medledger.ledger import codec


def test_a_map_of_thousands_of_keys_is_not_remembered_by_the_encoder() -> None:
    wide = {f"key-{i:06d}-review12b": i for i in range(5000)}  # already in canonical order
    assert codec.encode_trusted(wide) == codec.encode(wide)
    shape = tuple(wide)
    assert shape not in codec._ordered_shapes
    assert shape not in codec._orders
