"""Keys, signed envelopes, certificates, sealing, content identity and subject ids.

Depends on nothing else in the exchange but its generated contract (``exchange.v1``).
"""
