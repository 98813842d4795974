"""The package's version: one place, below every area (env.json records it; pyproject.toml reads it)."""

__version__ = "0.1.0"
