"""atlas: a living map of open language models, by their log-likelihood vectors."""

from atlas.api import Atlas

__version__ = "0.1.0"
__all__ = ["Atlas", "__version__"]
