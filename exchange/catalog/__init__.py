"""The catalog (数据资源目录): material types with their field schemas, purposes and forms."""

from exchange.catalog.model import FieldSpec, Form, FormField, MaterialType, Purpose, SharingClass
from exchange.catalog.repository import CatalogStore

__all__ = [
    "CatalogStore",
    "FieldSpec",
    "Form",
    "FormField",
    "MaterialType",
    "Purpose",
    "SharingClass",
]
