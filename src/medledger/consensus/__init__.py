"""How blocks get made: the `Engine` protocol and its two engines.

Owns: `engine` (the Protocol a node talks through: submit, query, wait, follow), `solo` (one
in-process block producer signing with the solo key), `cometbft` (ABCI server, CometBFT
processes, testnet files, RPC client, header checks). An engine drives whatever ledger app it
is handed; the hospital's app process is started by `medledger.node.run_app`.

May import: ledger, host. Never contracts' rules, vault, interop, node or anything above.
"""
