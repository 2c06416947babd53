"""medledger.exchange"""
