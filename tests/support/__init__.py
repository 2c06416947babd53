"""Helpers shared across test packages: a ledger net with known keys (`ledger`), the
three-hospital care world (`world`), access-trail entries and signed requests (`access`),
and an ingestion crashed at a chosen step (`ingest`). Fixtures stay in the conftests."""
