"""medledger.exchange: the hospital-to-hospital layer (see DESIGN.md, Exchange).

pki       each hospital's own TLS key and certificate; TLS 1.3 mutual-auth contexts pinned to
          the members' keys on the chain (no CA)
signing   Ed25519-signed requests (method, target, body hash, time, nonce, audience) and
          the custodian's evidence table; replays and stale requests refused
policy    the consortium's `authorize`, asked on this node's replica by both sides
gateway   the custodian side: authorize, commit the access entry, then serve
client    the requesting side: signed calls over mTLS, commitments checked on the replica
sync      the sync agent: metadata keys, prefetched copies, referral deliveries, erasure
events    the Server-Sent Events stream, derived from committed blocks
server    uvicorn over mutual TLS in a thread, exposing the member the client key is pinned to
service   one hospital's exchange, wired (what `medledger node run` starts)

May import: node, consensus, vault, interop, contracts, ledger, host; never api (its sibling),
web, provisioning or cli.
"""
