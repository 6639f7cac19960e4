"""The exchange's service functions: one per call, knowing nothing of gRPC.

Each takes the Hub, the authenticated Caller and the decoded request body, appends exactly one
ledger entry for the call (through ``record``), and returns the response message with its
receipt, or raises an ``exchange.errors.ExchangeError``.
"""
