"""SQLite store: schema, migrations, versioning, lineage, replay, diff.

Imports nothing else of Distillery's.
"""

from .db import DB_NAME, Store, now, sha256_text
from .errors import (
    Ambiguous, Conflict, CorruptDatabase, DatabaseFault, EmptyDatabase, ForeignDatabase, NewerDatabase, NotFound,
    ReadOnlyDatabase, StoreError,
)

__all__ = [
    "DB_NAME", "Store", "now", "sha256_text", "StoreError", "NotFound", "Ambiguous", "Conflict",
    "DatabaseFault", "CorruptDatabase", "ReadOnlyDatabase", "NewerDatabase", "EmptyDatabase", "ForeignDatabase",
]
