"""medledger.contracts"""
