"""Python client for quiver, a replicated vector store.

``QuiverClient`` / ``AsyncQuiverClient`` speak the HTTP API with leader discovery, balanced reads
and read-your-writes sessions; their results are plain dicts typed by the ``TypedDict``s of
:mod:`quiver_client.types` (``SearchResult``, ``Hit``, ``WriteResult``, ...), also exported here.
``quiver_client.langchain.QuiverVectorStore`` is a LangChain ``VectorStore`` (install the
``langchain`` extra).
"""

from ._balance import Balancer, Policy
from .client import AsyncQuiverClient, QuiverClient, QuiverConnectionError, QuiverError
from .types import (
    BatchSearchResult,
    ClusterStatus,
    CollectionConfig,
    CollectionInfo,
    CollectionList,
    Condition,
    Consistency,
    Filter,
    GetPointsResult,
    Hit,
    HnswConfig,
    Match,
    MatchAny,
    MatchScalar,
    MatchValue,
    MaxLag,
    Member,
    Metric,
    MinIndex,
    NodeStats,
    Payload,
    Point,
    PointId,
    PointRecord,
    Quantization,
    PointResult,
    Range,
    SearchRequest,
    SearchResult,
    WriteResult,
)

__all__ = [
    "AsyncQuiverClient",
    "Balancer",
    "BatchSearchResult",
    "ClusterStatus",
    "CollectionConfig",
    "CollectionInfo",
    "CollectionList",
    "Condition",
    "Consistency",
    "Filter",
    "GetPointsResult",
    "Hit",
    "HnswConfig",
    "Match",
    "MatchAny",
    "MatchScalar",
    "MatchValue",
    "MaxLag",
    "Member",
    "Metric",
    "MinIndex",
    "NodeStats",
    "Payload",
    "Point",
    "PointId",
    "PointRecord",
    "Quantization",
    "PointResult",
    "Policy",
    "QuiverClient",
    "QuiverConnectionError",
    "QuiverError",
    "Range",
    "SearchRequest",
    "SearchResult",
    "WriteResult",
]
#: The one place the version is written; pyproject.toml reads it from here.
__version__ = "0.1.0"
