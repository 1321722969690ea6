"""A LangChain ``VectorStore`` backed by quiver.

Each document is one point: its id (a string, a UUID by default), its embedding, and the payload
``{"page_content": ..., "metadata": {...}}``. Reads carry the store's read-your-writes token, so a
search right after an add sees the add, on whichever replica it lands.
"""

from __future__ import annotations

import math
import uuid
from typing import Any, Awaitable, Callable, Iterable, ParamSpec, Sequence, TypeVar, cast

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from ._balance import Policy
from .client import AsyncQuiverClient, QuiverClient, QuiverError
from .types import Condition, Filter, Hit, Metric, Point, PointRecord, Quantization

_BATCH = 256

P = ParamSpec("P")
T = TypeVar("T")


def _to_filter(filter: dict[str, Any] | None) -> Filter | None:
    """A quiver filter (``must``/``should``/``must_not``) passes through; a plain
    ``{"field": value}`` dict means every metadata field equals its value."""
    if not filter:
        return None
    if any(k in filter for k in ("must", "should", "must_not")):
        return cast(Filter, filter)
    must: list[Condition] = []
    for key, value in filter.items():
        if isinstance(value, (list, tuple)):
            must.append({"key": f"metadata.{key}", "match": {"any": list(value)}})
        else:
            must.append({"key": f"metadata.{key}", "match": {"value": value}})
    return {"must": must}


def _document(hit: Hit | PointRecord) -> Document:
    payload = hit.get("payload") or {}
    return Document(
        page_content=payload.get("page_content", ""),
        metadata=payload.get("metadata") or {},
        id=str(hit["id"]),
    )


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na = sum(x * x for x in a) ** 0.5
    nb = sum(y * y for y in b) ** 0.5
    return dot / (na * nb) if na and nb else 0.0


def _mmr(query: list[float], hits: list[Hit], k: int, lambda_mult: float) -> list[Hit]:
    """Maximal marginal relevance: repeatedly take the candidate with the best
    ``lambda * sim(query) - (1 - lambda) * max sim(already chosen)``."""
    relevance = [_cosine(query, h["vector"]) for h in hits]
    chosen: list[int] = []
    while len(chosen) < min(k, len(hits)):
        best, best_score = -1, float("-inf")
        for i, h in enumerate(hits):
            if i in chosen:
                continue
            redundancy = max((_cosine(h["vector"], hits[j]["vector"]) for j in chosen), default=0.0)
            score = lambda_mult * relevance[i] - (1 - lambda_mult) * redundancy
            if score > best_score:
                best, best_score = i, score
        chosen.append(best)
    return [hits[i] for i in chosen]


def _missing(e: QuiverError) -> bool:
    return e.code == "collection_not_found"


def _unless_missing(call: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T | None:
    """``call(*args, **kwargs)``, or None when the store's collection does not exist (yet, or
    any more: another store may have dropped it)."""
    try:
        return call(*args, **kwargs)
    except QuiverError as e:
        if _missing(e):
            return None
        raise


async def _aunless_missing(call: Callable[P, Awaitable[T]], /, *args: P.args,
                           **kwargs: P.kwargs) -> T | None:
    """``await call(*args, **kwargs)``, or None when the store's collection does not exist."""
    try:
        return await call(*args, **kwargs)
    except QuiverError as e:
        if _missing(e):
            return None
        raise


class QuiverVectorStore(VectorStore):
    """LangChain vector store on a quiver cluster.

    ``urls`` may name one node or several (the leader and the replicas are discovered); pass
    ``client`` to share a configured :class:`QuiverClient` instead.

    Every search method also takes the keyword ``ef``: the HNSW search breadth (default: the
    node's ``--default-ef``, and at least ``k``); larger recalls better and costs more. A retriever
    passes it on too: ``as_retriever(search_kwargs={"k": 4, "ef": 128})``.
    """

    def __init__(
        self,
        embedding: Embeddings,
        collection_name: str = "langchain",
        *,
        urls: str | list[str] = "http://127.0.0.1:7070",
        api_key: str | None = None,
        metric: Metric = "cosine",
        quantization: Quantization | None = None,
        policy: Policy | str = Policy.POWER_OF_TWO,
        client: QuiverClient | None = None,
    ) -> None:
        self._embedding = embedding
        self.collection_name = collection_name
        self.metric: Metric = metric
        # How the collection this store creates holds its vectors (None: the server's default).
        self.quantization: Quantization | None = quantization
        self.client = client or QuiverClient(
            urls, api_key=api_key, policy=policy, read_your_writes=True
        )
        # The async client shares the sync one's nodes, balancer and session token.
        self.async_client = AsyncQuiverClient.sharing(self.client)
        self._dim: int | None = None
        # An existing collection's metric (and quantisation) win over the arguments (scores must
        # be read its way).
        info = _unless_missing(self.client.collection, collection_name)
        if info is not None:
            self.metric, self._dim = info["config"]["metric"], info["config"]["dim"]
            self.quantization = info["config"].get("quantization", "none")

    def close(self) -> None:
        """Closes the sync client's connections."""
        self.client.close()

    async def aclose(self) -> None:
        """Closes the async client's connections (of the running event loop)."""
        await self.async_client.aclose()

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        """Maps quiver's score to LangChain's relevance in [0, 1] (1 = most similar)."""
        if self.metric == "l2":
            return self._euclidean_relevance_score_fn
        if self.metric == "dot":
            return lambda score: 1.0 / (1.0 + math.exp(-score))
        # cosine similarity in [-1, 1]
        return lambda score: (score + 1.0) / 2.0

    # --- writing ------------------------------------------------------------------------

    def _points(self, texts: list[str], vectors: list[list[float]],
                metadatas: Iterable[dict[str, Any]] | None,
                ids: Iterable[str | None] | None) -> list[Point]:
        metadatas = list(metadatas) if metadatas is not None else [{} for _ in texts]
        ids = list(ids) if ids is not None else [None] * len(texts)
        if not (len(metadatas) == len(ids) == len(texts)):
            raise ValueError("texts, metadatas and ids must have the same length")
        return [
            {
                "id": str(i) if i is not None else str(uuid.uuid4()),
                "vector": v,
                "payload": {"page_content": t, "metadata": m or {}},
            }
            for t, v, m, i in zip(texts, vectors, metadatas, ids)
        ]

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        texts = list(texts)
        if not texts:
            return []
        points = self._points(texts, self._embedding.embed_documents(texts), metadatas, ids)
        dim = len(points[0]["vector"])
        if self._dim is None:
            self.client.create_collection(
                self.collection_name, dim, self.metric, quantization=self.quantization
            )
            self._dim = dim
        for start in range(0, len(points), _BATCH):
            batch = points[start : start + _BATCH]
            if _unless_missing(self.client.upsert, self.collection_name, batch) is None:
                # Dropped meanwhile (by another store on the same collection): create it again.
                self.client.create_collection(
                    self.collection_name, dim, self.metric, quantization=self.quantization
                )
                self.client.upsert(self.collection_name, batch)
        return [str(p["id"]) for p in points]

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        texts = list(texts)
        if not texts:
            return []
        vectors = await self._embedding.aembed_documents(texts)
        points = self._points(texts, vectors, metadatas, ids)
        dim = len(points[0]["vector"])
        if self._dim is None:
            await self.async_client.create_collection(
                self.collection_name, dim, self.metric, quantization=self.quantization
            )
            self._dim = dim
        for start in range(0, len(points), _BATCH):
            batch = points[start : start + _BATCH]
            if await _aunless_missing(self.async_client.upsert, self.collection_name, batch) is None:
                await self.async_client.create_collection(
                    self.collection_name, dim, self.metric, quantization=self.quantization
                )
                await self.async_client.upsert(self.collection_name, batch)
        return [str(p["id"]) for p in points]

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Deletes the given ids (missing ones are ignored), or the whole collection with None."""
        if ids is None:
            self.client.delete_collection(self.collection_name)  # missing_ok
            self._dim = None
        elif ids:
            _unless_missing(self.client.delete_points, self.collection_name, ids=[str(i) for i in ids])
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        if ids is None:
            await self.async_client.delete_collection(self.collection_name)  # missing_ok
            self._dim = None
        elif ids:
            await _aunless_missing(
                self.async_client.delete_points, self.collection_name, ids=[str(i) for i in ids]
            )
        return True

    # --- reading ------------------------------------------------------------------------

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        if not ids:
            return []
        # A missing collection reads as no points (the client's own rule for points/get).
        found = self.client.get_points(self.collection_name, [str(i) for i in ids], with_vector=False)
        return [_document(p) for p in found["points"]]

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        if not ids:
            return []
        found = await self.async_client.get_points(
            self.collection_name, [str(i) for i in ids], with_vector=False
        )
        return [_document(p) for p in found["points"]]

    def similarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None, *,
        ef: int | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        found = _unless_missing(
            self.client.search, self.collection_name, embedding, k, filter=_to_filter(filter), ef=ef
        )
        return [] if found is None else [(_document(h), h["score"]) for h in found["hits"]]

    async def asimilarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None, *,
        ef: int | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        found = await _aunless_missing(
            self.async_client.search, self.collection_name, embedding, k,
            filter=_to_filter(filter), ef=ef,
        )
        return [] if found is None else [(_document(h), h["score"]) for h in found["hits"]]

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None, *,
        ef: int | None = None, **kwargs: Any
    ) -> list[Document]:
        found = self.similarity_search_with_score_by_vector(embedding, k, filter, ef=ef, **kwargs)
        return [d for d, _ in found]

    async def asimilarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None, *,
        ef: int | None = None, **kwargs: Any
    ) -> list[Document]:
        found = await self.asimilarity_search_with_score_by_vector(embedding, k, filter, ef=ef, **kwargs)
        return [d for d, _ in found]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, *,
        ef: int | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        vector = self._embedding.embed_query(query)
        return self.similarity_search_with_score_by_vector(vector, k, filter, ef=ef, **kwargs)

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, *,
        ef: int | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        vector = await self._embedding.aembed_query(query)
        return await self.asimilarity_search_with_score_by_vector(vector, k, filter, ef=ef, **kwargs)

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, *,
        ef: int | None = None, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter, ef=ef, **kwargs)]

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, *,
        ef: int | None = None, **kwargs: Any
    ) -> list[Document]:
        found = await self.asimilarity_search_with_score(query, k, filter, ef=ef, **kwargs)
        return [d for d, _ in found]

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        *,
        ef: int | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        found = _unless_missing(
            self.client.search, self.collection_name, embedding, max(k, fetch_k),
            filter=_to_filter(filter), ef=ef, with_vector=True,
        )
        return [] if found is None else [_document(h) for h in _mmr(embedding, found["hits"], k, lambda_mult)]

    async def amax_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        *,
        ef: int | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        found = await _aunless_missing(
            self.async_client.search, self.collection_name, embedding, max(k, fetch_k),
            filter=_to_filter(filter), ef=ef, with_vector=True,
        )
        return [] if found is None else [_document(h) for h in _mmr(embedding, found["hits"], k, lambda_mult)]

    def max_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None, *, ef: int | None = None, **kwargs: Any,
    ) -> list[Document]:
        vector = self._embedding.embed_query(query)
        return self.max_marginal_relevance_search_by_vector(vector, k, fetch_k, lambda_mult, filter, ef=ef)

    async def amax_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None, *, ef: int | None = None, **kwargs: Any,
    ) -> list[Document]:
        vector = await self._embedding.aembed_query(query)
        return await self.amax_marginal_relevance_search_by_vector(
            vector, k, fetch_k, lambda_mult, filter, ef=ef
        )

    # --- construction -------------------------------------------------------------------

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> QuiverVectorStore:
        """A store built with ``kwargs`` (``collection_name``, ``urls``, ``client``, ...) that
        holds `texts`."""
        store = cls(embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    async def afrom_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> QuiverVectorStore:
        store = cls(embedding, **kwargs)
        await store.aadd_texts(texts, metadatas, ids=ids)
        return store
