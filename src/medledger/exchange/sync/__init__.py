"""The sync agent: the requesting side's real-time loop, driven by committed blocks.

It follows this node's replica block by block (a cursor in its home makes it resume where it
stopped) and turns events into jobs (`sync`, `deliver`, `confirm`, `erase`: the table of which
event makes which job is in planner.py), kept in the same SQLite file as the cursor, in the
same transaction, so that a crash never loses one.

A `sync` job obtains the custodian's metadata keys for the patient when it lacks one of the
categories `authorize` grants it (asked on this replica, category by category, as the gateway
will; the keys come sealed to this hospital's X25519 key, one per category granted, and are
kept encrypted here), opens those of the custodian's index entries its keys open from its own
replica (the others are of categories not granted: they stay closed), asks `authorize` locally
what the custodian will grant (the same function on the same state), fetches those records it
does not hold yet, checks each against its commitment, and stores them in its vault
re-encrypted under its own keys, marked as copies with the custodian's salt (so the commitment
stays checkable, and erasure reaches them). A refusal ends a job; an unreachable peer is
retried with backoff.
"""

from medledger.exchange.sync.agent import SyncAgent
from medledger.exchange.sync.store import MAX_ATTEMPTS, MAX_BACKOFF_S, Job, SyncStore

__all__ = ["MAX_ATTEMPTS", "MAX_BACKOFF_S", "Job", "SyncAgent", "SyncStore"]
