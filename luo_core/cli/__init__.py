"""The ``luo`` command."""

from luo_core.cli._main import main

__all__ = ["main"]
