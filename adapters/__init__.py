"""The department side of the exchange: provider adapters and the client SDK for calling the hub."""
