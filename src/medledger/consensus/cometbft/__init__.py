"""The CometBFT engine: medledger's state machine driven by CometBFT v0.38 over ABCI 2.0.

Modules: `abci_server` (the socket server CometBFT talks to), `engine` (the `Engine`
implementation a hospital node uses), `testnet` (CometBFT homes, config and genesis),
`processes` (start and stop each hospital's CometBFT and app processes), `verify` (app hashes
against CometBFT's headers), `rpc` (a small client for CometBFT's JSON-RPC). The app
process's entry point is `medledger.node.run_app`: it reads a hospital's config, which this
package must not import.
"""
