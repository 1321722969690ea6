"""Python client for quiver, a replicated vector store.

``QuiverClient`` / ``AsyncQuiverClient`` speak the HTTP API with leader discovery, balanced reads
and read-your-writes sessions; ``quiver_client.langchain.QuiverVectorStore`` is a LangChain
``VectorStore`` (install the ``langchain`` extra).
"""

from ._balance import Balancer, Policy
from .client import AsyncQuiverClient, QuiverClient, QuiverConnectionError, QuiverError

__all__ = [
    "AsyncQuiverClient",
    "Balancer",
    "Policy",
    "QuiverClient",
    "QuiverConnectionError",
    "QuiverError",
]
__version__ = "0.1.0"
