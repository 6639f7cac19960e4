"""Keys, signed envelopes and certificates. Depends on nothing else in the exchange."""
