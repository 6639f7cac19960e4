"""The one SQLAlchemy MetaData every table of the exchange is declared on.

Tables live beside the code that owns them: ``exchange.store.tables`` (the registry, request
ids), ``exchange.store.exchange_tables`` (the catalog, grants, the material index, objections),
``exchange.store.consents``, ``exchange.store.operator_keys``, ``exchange.store.log_keys``,
``exchange.ledger.storage`` (the ledger), ``exchange.supervision.store``,
``exchange.observability.alerts`` (alert deliveries) and ``exchange.ownership``; the Alembic
migrations under ``exchange/store/migrations`` create them.
"""

from __future__ import annotations

from sqlalchemy import MetaData

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)
