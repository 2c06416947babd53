"""One hospital's HTTP API: the FHIR R4 facade, SMART tokens, the portal API and admin.

Owns: the FastAPI app (`app`), FHIR routes (`fhir`), SMART scopes and tokens (`scopes`,
`tokens`, `auth`), OperationOutcome errors (`outcomes`), the audit trail readers (`audit`) and
what the routes share (`services.HospitalServices`). The pages are mounted on the app above
it, by `medledger.web.site`.

May import: node, consensus, vault, interop, contracts, ledger, host; never exchange (its
sibling), web, provisioning or cli.
"""
