"""medledger.web"""
