"""Federated study queries, a hospital's side: it answers running queries by itself.

`evaluate` reads the hospital's own records of the enrolled patients into `PatientFacts`;
`answer` exchanges partial facts with the co-custodians (count-once), tallies, masks and
posts the answer; `masks` makes the pairwise masks that hide each hospital's answer; `agent`
is the running node's thread. The shared rules (what a query is, how answers combine) are
the contract's (`contracts.study_query`, `contracts.research`); the partials inbox the
gateway fills is `node.study_partials`. docs/architecture.md, "Federated study queries".
"""
