"""Garbage-collector settings for the long-running node processes.

A node keeps a large, long-lived heap: the libraries and FHIR models it imported, and a cache
of verified txs that covers the mempool. CPython's full collections traverse all of it and
find nothing to free; under load they ran every few seconds and paused an app for 90-190 ms,
long enough to stall a consensus round on every node in turn. So once a node has started,
what it loaded is moved out of the collector's sight (`gc.freeze`), and full collections are
made rare. Reference counting still frees almost everything at once; the young generations
still collect fresh cycles.
"""

from __future__ import annotations

import gc

# Young collections every 10,000 net allocations (default 700), a middle one every 20 of
# those, a full one every 100 middle ones: about every 20 million allocations.
THRESHOLDS = (10_000, 20, 100)


def settle(thresholds: tuple[int, int, int] = THRESHOLDS) -> None:
    """Call once a node is up: freeze what start-up built, then space out collections."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
