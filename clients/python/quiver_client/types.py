"""The shapes of what the API takes and returns, as ``TypedDict``s (chromadb's style).

They describe the JSON exactly as a node sends and accepts it (``src/model.rs`` and
``src/filter.rs`` on the server), so a result is still a plain ``dict`` at run time: code that
indexes results keeps working, and mypy or an editor knows every key. A key that the server leaves
out when it has no value (``Hit.payload``, ``WriteResult.upserted``, ...) is not required.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict, Union

__all__ = [
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
    "MatchScalar",
    "MatchAny",
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
    "Range",
    "SearchRequest",
    "SearchResult",
    "WriteResult",
]

# --- values ----------------------------------------------------------------------------------

#: A point's id: a string of 1-512 characters (e.g. a UUID) or an unsigned integer.
PointId = Union[str, int]
#: A payload: any JSON object.
Payload = dict[str, Any]
#: How similarity is measured.
Metric = Literal["cosine", "l2", "dot"]
#: A value a filter compares with.
MatchScalar = Union[str, int, float, bool]


class MinIndex(TypedDict):
    """Read-your-writes: answer once the node has applied this log index."""

    min_index: int


class MaxLag(TypedDict):
    """Bounded staleness: answer only when at most this many ms behind the leader."""

    max_lag_ms: int


#: How fresh a read must be: ``"eventual"`` (the default), ``"linearizable"``,
#: ``{"min_index": N}`` or ``{"max_lag_ms": T}``.
Consistency = Union[Literal["eventual", "linearizable"], MinIndex, MaxLag]

# --- filters ---------------------------------------------------------------------------------


class MatchValue(TypedDict):
    """Equal to this value."""

    value: MatchScalar


class MatchAny(TypedDict):
    """Equal to any of these values (at most 1,024)."""

    any: list[MatchScalar]


Match = Union[MatchValue, MatchAny]


class Range(TypedDict, total=False):
    """Numeric bounds; every bound given must hold."""

    gt: float
    gte: float
    lt: float
    lte: float


class _ConditionKey(TypedDict):
    key: str


class Condition(_ConditionKey, total=False):
    """One condition on one payload key (dots walk into nested objects): exactly one of
    ``match`` and ``range``."""

    match: Match
    range: Range


class Filter(TypedDict, total=False):
    """``{"must": [...], "should": [...], "must_not": [...]}``, as Qdrant spells it."""

    must: list[Condition]
    should: list[Condition]
    must_not: list[Condition]


# --- requests --------------------------------------------------------------------------------


class _PointRequired(TypedDict):
    id: PointId
    vector: list[float]


class Point(_PointRequired, total=False):
    """A point to upsert."""

    payload: Payload | None


class _SearchVector(TypedDict):
    vector: list[float]


class SearchRequest(_SearchVector, total=False):
    """One search of :meth:`~quiver_client.QuiverClient.search_batch` (the batch's
    ``consistency`` applies to all of them)."""

    k: int
    ef: int
    filter: Filter
    score_threshold: float
    with_payload: bool
    with_vector: bool
    exact: bool
    cache: bool


# --- results ---------------------------------------------------------------------------------


class _WriteIndex(TypedDict):
    index: int


class WriteResult(_WriteIndex, total=False):
    """The answer to every write: its log index (pass it as ``min_index`` to read it back),
    plus ``created`` (create), ``upserted`` (upsert), ``deleted`` (delete points) or
    ``compacted`` (compact: tombstones the rebuild drops)."""

    upserted: int
    deleted: int
    created: bool
    compacted: int


class _HitRequired(TypedDict):
    id: PointId
    score: float


class Hit(_HitRequired, total=False):
    """One search result. ``score``: cosine similarity or dot product (higher is better) or
    Euclidean distance (lower is better). ``payload`` when asked for and the point has one;
    ``vector`` (normalised for cosine) when asked for."""

    payload: Payload
    vector: list[float]


class SearchResult(TypedDict):
    """``hits`` best first, and the log index the answer was served at."""

    hits: list[Hit]
    index: int


class BatchSearchResult(TypedDict):
    """One hit list per search, in order, and the log index the answers were served at."""

    results: list[list[Hit]]
    index: int


class PointRecord(TypedDict):
    """A stored point (the vector normalised for cosine; empty when not asked for)."""

    id: PointId
    vector: list[float]
    payload: Payload | None


class PointResult(PointRecord):
    """A point and the log index it was read at."""

    index: int


class GetPointsResult(TypedDict):
    """The points that exist among the ids asked for, in that order, and the read's index."""

    points: list[PointRecord]
    index: int


class HnswConfig(TypedDict):
    """HNSW graph parameters."""

    m: int
    ef_construction: int


#: How a collection holds the vectors its graph walks: full floats (default); int8 codes in
#: memory with the full vectors on disk for rescoring; or int8 codes for the walk beside the full
#: vectors in memory (the fastest search, a quarter more memory than "none").
Quantization = Literal["none", "int8", "int8_ram"]


class _CollectionConfigRequired(TypedDict):
    dim: int
    metric: Metric
    hnsw: HnswConfig


class CollectionConfig(_CollectionConfigRequired, total=False):
    """A collection's immutable configuration (``quantization`` only when it is not "none")."""

    quantization: Quantization


class CollectionInfo(TypedDict):
    """A collection: live points, tombstones (deleted or replaced points still in the graph),
    points not yet in the graph, and the log index read at (0 inside a list)."""

    name: str
    config: CollectionConfig
    points: int
    tombstones: int
    unindexed: int
    index: int


class CollectionList(TypedDict):
    """Every collection, and the log index read at."""

    collections: list[CollectionInfo]
    index: int


class _MemberRequired(TypedDict):
    id: int
    addr: str
    role: str


class Member(_MemberRequired, total=False):
    """A cluster member: ``role`` is ``voter`` or ``learner``; on the leader, ``matched`` (the
    last index known replicated there) and ``lag`` (entries behind the leader's log)."""

    matched: int
    lag: int


class _ClusterRequired(TypedDict):
    id: int
    role: str
    term: int
    leader_id: int | None
    leader_addr: str | None
    applied_index: int
    committed_index: int
    last_log_index: int
    members: list[Member]
    writable: bool


class ClusterStatus(_ClusterRequired, total=False):
    """``GET /cluster``: this node's view. ``role``: leader, follower, learner or candidate;
    ``writable``: it takes writes now. On the leader, ``quorum_ack_ms``: ms since a quorum last
    acknowledged it; ``fatal``: why Raft stopped on this node, if it did."""

    quorum_ack_ms: int
    fatal: str


class NodeStats(TypedDict):
    """What this client has seen of one node it reads from."""

    url: str
    outstanding: int
    latency_ms: float
    served: int
    failures: int
