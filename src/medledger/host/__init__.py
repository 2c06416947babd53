"""What the host machine gives: secret files (`secretfile`) and free loopback ports (`ports`).

The lowest layer: imports nothing of medledger, so the ledger itself may use it.
"""
