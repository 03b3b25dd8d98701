"""SQLite store: schema, migrations, versioning, lineage, replay, diff.

Imports nothing else of Distillery's.
"""

from .db import DB_NAME, Store, now, sha256_text

__all__ = ["DB_NAME", "Store", "now", "sha256_text"]
