"""The SDK's typed registry, catalog, form and grant methods against a real hub and real
adapters, every receipt verified against the hub's key."""

from __future__ import annotations

import pytest

from adapters.client import Refused
from exchange.v1 import catalog_pb2, grants_pb2
from tests.flows.world import (
    ANNA,
    ASSISTANCE,
    CIVIL,
    FORM,
    FORM_TOOL,
    HOUSEHOLD,
    MARRIAGE,
    SOCIAL,
    World,
)


async def test_typed_methods_read_and_change_with_verified_receipts(world: World) -> None:
    async with world.verified_client(CIVIL) as civil, world.verified_client(FORM_TOOL) as tool:
        departments = await civil.list_departments()
        assert CIVIL in {d.id for d in departments.departments}
        catalog = await tool.list_catalog()
        assert FORM in {f.id for f in catalog.forms}
        assert HOUSEHOLD in {m.id for m in catalog.material_types}
        form = catalog_pb2.Form(
            id="household-check",
            name="Household check",
            purpose=ASSISTANCE,
            fields=[
                catalog_pb2.FormField(
                    name="full_name", material_type=HOUSEHOLD, material_field="name"
                )
            ],
        )
        registered = await tool.register_form(form)
        assert registered.form.owner == FORM_TOOL and registered.receipt.sequence > 0
        issued = await civil.issue_grant(
            grants_pb2.Grant(
                consumer=SOCIAL,
                material_type=MARRIAGE,
                fields=["marital_status"],
                purposes=[ASSISTANCE],
            )
        )
        assert issued.grant.owner == CIVIL
        assert issued.grant.id in {g.id for g in (await civil.list_grants()).grants}
    async with world.verified_client(SOCIAL) as social:
        material = await social.request(MARRIAGE, ANNA, purpose=ASSISTANCE)
        assert material.fields == {"marital_status": "married"}
        with pytest.raises(Refused) as refused:
            await social.issue_grant(
                grants_pb2.Grant(
                    consumer=SOCIAL,
                    material_type=MARRIAGE,
                    fields=["marital_status"],
                    purposes=[ASSISTANCE],
                )
            )
        assert refused.value.reason == "NOT_OWNER"
