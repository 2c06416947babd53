"""Server-rendered pages: patient portal, clinician view, network explorer (no build step).

Owns: the pages' routes and markup (`pages`, `render`) and the hospital's whole HTTP site
(`site.create_app`: the API with the pages mounted on it).

May import: api and everything below it; never exchange, provisioning (its sibling) or cli.
"""
