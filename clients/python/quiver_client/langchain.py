"""A LangChain ``VectorStore`` backed by quiver.

Each document is one point: its id (a string, a UUID by default), its embedding, and the payload
``{"page_content": ..., "metadata": {...}}``. Reads carry the store's read-your-writes token, so a
search right after an add sees the add, on whichever replica it lands.
"""

from __future__ import annotations

import math
import uuid
from typing import Any, Iterable, Sequence

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from ._balance import Policy
from .client import AsyncQuiverClient, QuiverClient, QuiverError

_BATCH = 256


def _to_filter(filter: dict | None) -> dict | None:
    """A quiver filter (``must``/``should``/``must_not``) passes through; a plain
    ``{"field": value}`` dict means every metadata field equals its value."""
    if not filter:
        return None
    if any(k in filter for k in ("must", "should", "must_not")):
        return filter
    must = []
    for key, value in filter.items():
        cond = {"any": value} if isinstance(value, (list, tuple)) else {"value": value}
        must.append({"key": f"metadata.{key}", "match": cond})
    return {"must": must}


def _document(hit: dict) -> Document:
    payload = hit.get("payload") or {}
    return Document(
        page_content=payload.get("page_content", ""),
        metadata=payload.get("metadata") or {},
        id=str(hit["id"]),
    )


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na = sum(x * x for x in a) ** 0.5
    nb = sum(y * y for y in b) ** 0.5
    return dot / (na * nb) if na and nb else 0.0


def _mmr(query: list[float], hits: list[dict], k: int, lambda_mult: float) -> list[dict]:
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


class QuiverVectorStore(VectorStore):
    """LangChain vector store on a quiver cluster.

    ``urls`` may name one node or several (the leader and the replicas are discovered); pass
    ``client`` to share a configured :class:`QuiverClient` instead.
    """

    def __init__(
        self,
        embedding: Embeddings,
        collection_name: str = "langchain",
        *,
        urls: str | list[str] = "http://127.0.0.1:7070",
        api_key: str | None = None,
        metric: str = "cosine",
        policy: Policy | str = Policy.POWER_OF_TWO,
        client: QuiverClient | None = None,
    ) -> None:
        self._embedding = embedding
        self.collection_name = collection_name
        self.metric = metric
        self.client = client or QuiverClient(
            urls, api_key=api_key, policy=policy, read_your_writes=True
        )
        # The async client shares the sync one's nodes, balancer and session token.
        self.async_client = AsyncQuiverClient.sharing(self.client)
        self._dim: int | None = None
        # An existing collection's metric wins over the argument (scores must be read its way).
        try:
            info = self.client.collection(collection_name)
            self.metric, self._dim = info["config"]["metric"], info["config"]["dim"]
        except QuiverError as e:
            if not _missing(e):
                raise

    def close(self) -> None:
        """Closes the sync client's connections."""
        self.client.close()

    async def aclose(self) -> None:
        """Closes the async client's connections (of the running event loop)."""
        await self.async_client.aclose()

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    def _select_relevance_score_fn(self):
        """Maps quiver's score to LangChain's relevance in [0, 1] (1 = most similar)."""
        if self.metric == "l2":
            return self._euclidean_relevance_score_fn
        if self.metric == "dot":
            return lambda score: 1.0 / (1.0 + math.exp(-score))
        # cosine similarity in [-1, 1]
        return lambda score: (score + 1.0) / 2.0

    # --- writing ------------------------------------------------------------------------

    def _points(self, texts: list[str], vectors: list[list[float]], metadatas, ids) -> list[dict]:
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
        metadatas: list[dict] | None = None,
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
            self.client.create_collection(self.collection_name, dim, self.metric)
            self._dim = dim
        for start in range(0, len(points), _BATCH):
            try:
                self.client.upsert(self.collection_name, points[start : start + _BATCH])
            except QuiverError as e:
                if not _missing(e):
                    raise
                # Dropped meanwhile (by another store on the same collection): create it again.
                self.client.create_collection(self.collection_name, dim, self.metric)
                self.client.upsert(self.collection_name, points[start : start + _BATCH])
        return [p["id"] for p in points]

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
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
            await self.async_client.create_collection(self.collection_name, dim, self.metric)
            self._dim = dim
        for start in range(0, len(points), _BATCH):
            try:
                await self.async_client.upsert(self.collection_name, points[start : start + _BATCH])
            except QuiverError as e:
                if not _missing(e):
                    raise
                await self.async_client.create_collection(self.collection_name, dim, self.metric)
                await self.async_client.upsert(self.collection_name, points[start : start + _BATCH])
        return [p["id"] for p in points]

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Deletes the given ids (missing ones are ignored), or the whole collection with None."""
        try:
            if ids is None:
                self.client.delete_collection(self.collection_name)
                self._dim = None
            elif ids:
                self.client.delete_points(self.collection_name, ids=[str(i) for i in ids])
        except QuiverError as e:
            if not _missing(e):
                raise
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        try:
            if ids is None:
                await self.async_client.delete_collection(self.collection_name)
                self._dim = None
            elif ids:
                await self.async_client.delete_points(self.collection_name, ids=[str(i) for i in ids])
        except QuiverError as e:
            if not _missing(e):
                raise
        return True

    # --- reading ------------------------------------------------------------------------

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        if not ids:
            return []
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
        self, embedding: list[float], k: int = 4, filter: dict | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        try:
            found = self.client.search(
                self.collection_name, embedding, k, filter=_to_filter(filter), ef=kwargs.get("ef")
            )
        except QuiverError as e:
            if _missing(e):
                return []
            raise
        return [(_document(h), h["score"]) for h in found["hits"]]

    async def asimilarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        try:
            found = await self.async_client.search(
                self.collection_name, embedding, k, filter=_to_filter(filter), ef=kwargs.get("ef")
            )
        except QuiverError as e:
            if _missing(e):
                return []
            raise
        return [(_document(h), h["score"]) for h in found["hits"]]

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict | None = None, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score_by_vector(embedding, k, filter, **kwargs)]

    async def asimilarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict | None = None, **kwargs: Any
    ) -> list[Document]:
        found = await self.asimilarity_search_with_score_by_vector(embedding, k, filter, **kwargs)
        return [d for d, _ in found]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        vector = self._embedding.embed_query(query)
        return self.similarity_search_with_score_by_vector(vector, k, filter, **kwargs)

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        vector = await self._embedding.aembed_query(query)
        return await self.asimilarity_search_with_score_by_vector(vector, k, filter, **kwargs)

    def similarity_search(
        self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _ in await self.asimilarity_search_with_score(query, k, filter, **kwargs)]

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        try:
            found = self.client.search(
                self.collection_name, embedding, max(k, fetch_k), filter=_to_filter(filter), with_vector=True
            )
        except QuiverError as e:
            if _missing(e):
                return []
            raise
        return [_document(h) for h in _mmr(embedding, found["hits"], k, lambda_mult)]

    async def amax_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        try:
            found = await self.async_client.search(
                self.collection_name, embedding, max(k, fetch_k), filter=_to_filter(filter), with_vector=True
            )
        except QuiverError as e:
            if _missing(e):
                return []
            raise
        return [_document(h) for h in _mmr(embedding, found["hits"], k, lambda_mult)]

    def max_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
        filter: dict | None = None, **kwargs: Any,
    ) -> list[Document]:
        vector = self._embedding.embed_query(query)
        return self.max_marginal_relevance_search_by_vector(vector, k, fetch_k, lambda_mult, filter)

    async def amax_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
        filter: dict | None = None, **kwargs: Any,
    ) -> list[Document]:
        vector = await self._embedding.aembed_query(query)
        return await self.amax_marginal_relevance_search_by_vector(vector, k, fetch_k, lambda_mult, filter)

    # --- construction -------------------------------------------------------------------

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> "QuiverVectorStore":
        store = cls(embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    async def afrom_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> "QuiverVectorStore":
        store = cls(embedding, **kwargs)
        await store.aadd_texts(texts, metadatas, ids=ids)
        return store
