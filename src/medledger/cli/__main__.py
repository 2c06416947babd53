"""`python -m medledger.cli`: the same as the `medledger` command."""

from medledger.cli import main

main()
