"""medledger.ledger"""
