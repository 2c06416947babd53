"""medledger.interop"""
