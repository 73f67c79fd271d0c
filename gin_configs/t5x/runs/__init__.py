"""gin files (package data; see gin_configs/__init__.py)."""
