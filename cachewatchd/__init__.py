"""cachewatchd: keep the Python code that runs equal to the code on disk."""

__version__ = "0.1.0"

__all__ = ["__version__"]
