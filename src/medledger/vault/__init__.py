"""medledger.vault"""
