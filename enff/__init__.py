"""enff: ensemble flow filters and classical data assimilation on batched torch ensembles."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("enff")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
