"""Routing: the hub's client to the provider adapters that hold the material."""

from exchange.routing.deadline import call_deadline, set_call_deadline
from exchange.routing.provider import ProviderRouter

__all__ = ["ProviderRouter", "call_deadline", "set_call_deadline"]
