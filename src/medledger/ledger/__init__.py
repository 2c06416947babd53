"""The replicated state machine: txs, blocks, state, app hash, proofs and replay.

Owns: the tx wire form and its checks (`tx`, `codec`, `keys`), the key-value state and its
overlays (`store`), the `Contract`/`Registry` interface contracts plug into (`contract`),
executing blocks (`app`: `Application`, handed its registry of contracts by its caller),
genesis, Merkle roots and proofs, results and replay (`verify`).

May import: host only. It never imports the contracts it runs, nor anything above.
"""
