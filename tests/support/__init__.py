"""Helpers shared by test packages: a ledger net with known keys (`ledger`) and the
three-hospital care world (`world`)."""
