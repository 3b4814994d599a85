"""The version of refdiff (one place; the package, the CLI and exported files read it)."""

__version__ = "0.4.0"
