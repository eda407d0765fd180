"""The version every polydub distribution shares (a unit test checks their pyproject.toml files)."""

__version__ = "0.1.0"
