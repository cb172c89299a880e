"""Alembic migrations of the API database (``api.db.migrate`` runs them; ``alembic -c api/alembic.ini`` too)."""
