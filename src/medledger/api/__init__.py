"""medledger.api"""
