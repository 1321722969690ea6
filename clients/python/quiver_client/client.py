"""Typed sync and async clients for quiver over HTTP (httpx).

Writes go to the leader (found with ``GET /cluster``); a write is sent again only when it
provably never reached a node (connection refused) or a node refused it as not the leader, never
after it may have been applied. Reads are spread over the ready replicas with a
:class:`~quiver_client.Policy` and retried once elsewhere only when the first node did no work:
it could not be connected to, or it answered 503 or a 504 ``read_timeout``. A read whose
connection broke after it was sent is not repeated, since it may be what brought the node down.
With ``read_your_writes=True`` the client sends the highest index its writes returned as
``min_index`` on every read that names no consistency.

Layout (sans I/O, in the style of h11): ``_Core`` holds the state both clients share; the
``_request_*`` functions turn each endpoint's arguments into a ``_Request[T]``, where ``T`` is
the result type; ``_plan`` and ``_discover`` are generators that hold the retry and discovery
logic and yield ``_Refresh`` / ``_Send`` steps. ``QuiverClient`` and ``AsyncQuiverClient`` only
perform those steps with httpx; their endpoint methods are one-line typed wrappers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Generator, Generic, Iterable, Literal, Sequence, TypeVar, Union, cast
from urllib.parse import quote

import httpx

from ._balance import Balancer, Policy
from .types import (
    BatchSearchResult,
    ClusterStatus,
    CollectionInfo,
    CollectionList,
    Consistency,
    Filter,
    GetPointsResult,
    Metric,
    MinIndex,
    NodeStats,
    Point,
    PointId,
    PointResult,
    Quantization,
    SearchRequest,
    SearchResult,
    WriteResult,
)

__all__ = [
    "AsyncQuiverClient",
    "Consistency",
    "PointId",
    "QuiverClient",
    "QuiverConnectionError",
    "QuiverError",
]

T = TypeVar("T")


class QuiverError(Exception):
    """An error answer from a node, or no node to talk to."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.field = status, code, message, field


class QuiverConnectionError(QuiverError):
    """The request did not complete. For a write, it may or may not have been applied."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "connection", message)


def _error(resp: httpx.Response) -> QuiverError:
    try:
        e = resp.json()["error"]
        return QuiverError(resp.status_code, e["code"], e["message"], e.get("field"))
    except Exception:  # noqa: BLE001 - any undecodable body
        return QuiverError(resp.status_code, "unknown", resp.text)


def _consistency_params(c: Consistency | None) -> dict[str, str | int]:
    if c is None:
        return {}
    if isinstance(c, str):
        return {"consistency": c}
    return {k: cast(int, v) for k, v in c.items() if k in ("min_index", "max_lag_ms")}


# --- the shared state ----------------------------------------------------------------------------


class _Core:
    """State shared by the sync and async clients: nodes, leader, balancer, session token."""

    def __init__(self, urls: str | Sequence[str], *, api_key: str | None, policy: Policy | str,
                 discover: bool, read_your_writes: bool, read_from_leader: bool, timeout: float,
                 refresh_every: float) -> None:
        urls = [urls] if isinstance(urls, str) else list(urls)
        self.seeds = [u.strip().rstrip("/") for u in urls if u.strip()]
        if not self.seeds:
            raise ValueError("urls: give at least one node URL")
        self.known = list(self.seeds)
        self.leader: str | None = None
        self.balancer = Balancer(policy)
        self.balancer.set(self.seeds)
        self.discover, self.read_your_writes = discover, read_your_writes
        self.read_from_leader, self.timeout, self.refresh_every = read_from_leader, timeout, refresh_every
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.session = 0
        #: Guarded by `lock`, like `session` and what `apply` changes.
        self.last_refresh: float | None = None
        self.lock = threading.Lock()

    def observe(self, index: int) -> None:
        with self.lock:
            self.session = max(self.session, index)

    def session_consistency(self) -> MinIndex | None:
        return {"min_index": self.session} if self.read_your_writes and self.session else None

    def due(self) -> bool:
        if not self.discover:
            return False
        now = time.monotonic()
        with self.lock:
            if self.last_refresh is None or now - self.last_refresh >= self.refresh_every:
                self.last_refresh = now
                return True
        return False

    def refresh_soon(self) -> None:
        """Makes the next call rediscover the cluster first."""
        with self.lock:
            self.last_refresh = None

    def apply(self, status: ClusterStatus, ready: list[bool]) -> None:
        with self.lock:
            self._apply(status, ready)

    def _apply(self, status: ClusterStatus, ready: list[bool]) -> None:
        members = [(m["addr"].rstrip("/"), ok) for m, ok in zip(status["members"], ready)]
        leader = (status.get("leader_addr") or "").rstrip("/") or None
        readers = [a for a, ok in members if ok and (self.read_from_leader or a != leader)]
        if not readers:
            readers = [a for a, ok in members if ok and a == leader]
        if readers:
            self.balancer.set(readers)
        addrs = [a for a, _ in members]
        self.known = [u for u in self.known if u in self.seeds or u in addrs]
        self.known += [a for a in addrs if a not in self.known]
        self.leader = leader
        self.last_refresh = time.monotonic()

    def write_targets(self, tried: list[str]) -> str | None:
        order = ([self.leader] if self.leader else []) + self.known
        return next((u for u in order if u not in tried), None)


# --- requests: every endpoint, without I/O -------------------------------------------------------


@dataclass(frozen=True)
class _Request(Generic[T]):
    """One call: where it goes, what it sends, and how its answer becomes a ``T``."""

    kind: Literal["read", "write"]
    method: str
    path: str
    params: dict[str, str | int] = field(default_factory=dict)
    body: Any = None
    #: Error codes that mean "nothing there": the call returns `missing` instead of raising.
    missing_codes: tuple[str, ...] = ()
    missing: T | None = None


def _read_params(core: _Core, consistency: Consistency | None) -> dict[str, str | int]:
    return _consistency_params(consistency or core.session_consistency())


def _with_consistency(core: _Core, body: dict[str, Any], consistency: Consistency | None) -> dict[str, Any]:
    c = consistency or core.session_consistency()
    if c is not None:
        body["consistency"] = c
    return body


def _request_create_collection(name: str, dim: int, metric: Metric, m: int | None,
                               ef_construction: int | None,
                               quantization: Quantization | None) -> _Request[WriteResult]:
    hnsw = {k: v for k, v in (("m", m), ("ef_construction", ef_construction)) if v}
    body: dict[str, Any] = {"dim": dim, "metric": metric, **({"hnsw": hnsw} if hnsw else {})}
    if quantization is not None:
        body["quantization"] = quantization
    return _Request("write", "PUT", f"/collections/{name}", body=body)


def _request_delete_collection(name: str, missing_ok: bool) -> _Request[WriteResult | None]:
    codes = ("collection_not_found",) if missing_ok else ()
    return _Request("write", "DELETE", f"/collections/{name}", missing_codes=codes)


def _request_compact(name: str) -> _Request[WriteResult]:
    return _Request("write", "POST", f"/collections/{name}/compact")


def _request_collection(core: _Core, name: str, consistency: Consistency | None) -> _Request[CollectionInfo]:
    return _Request("read", "GET", f"/collections/{name}", params=_read_params(core, consistency))


def _request_collections(core: _Core, consistency: Consistency | None) -> _Request[CollectionList]:
    return _Request("read", "GET", "/collections", params=_read_params(core, consistency))


def _request_upsert(name: str, points: Iterable[Point]) -> _Request[WriteResult]:
    return _Request("write", "PUT", f"/collections/{name}/points", body={"points": list(points)})


def _request_get_point(core: _Core, name: str, id: PointId,
                       consistency: Consistency | None) -> _Request[PointResult | None]:
    return _Request("read", "GET", f"/collections/{name}/points/{quote(str(id), safe='')}",
                    params=_read_params(core, consistency),
                    missing_codes=("point_not_found", "collection_not_found"))


def _request_get_points(core: _Core, name: str, ids: Sequence[PointId], with_vector: bool,
                        consistency: Consistency | None) -> _Request[GetPointsResult]:
    body = _with_consistency(core, {"ids": list(ids), "with_vector": with_vector}, consistency)
    return _Request("read", "POST", f"/collections/{name}/points/get", body=body,
                    missing_codes=("collection_not_found",), missing={"points": [], "index": 0})


def _request_delete_points(name: str, ids: Sequence[PointId] | None,
                           filter: Filter | None) -> _Request[WriteResult]:
    body = {k: v for k, v in (("ids", ids), ("filter", filter)) if v is not None}
    return _Request("write", "POST", f"/collections/{name}/points/delete", body=body)


def _request_search(core: _Core, name: str, vector: Sequence[float], k: int, *, ef: int | None,
                    filter: Filter | None, with_payload: bool, with_vector: bool,
                    score_threshold: float | None, exact: bool, cache: bool,
                    consistency: Consistency | None) -> _Request[SearchResult]:
    body: dict[str, Any] = {"vector": list(vector), "k": k, "with_payload": with_payload,
                            "with_vector": with_vector, "exact": exact}
    if not cache:
        body["cache"] = False
    if ef is not None:
        body["ef"] = ef
    if filter is not None:
        body["filter"] = filter
    if score_threshold is not None:
        body["score_threshold"] = score_threshold
    body = _with_consistency(core, body, consistency)
    return _Request("read", "POST", f"/collections/{name}/points/search", body=body)


def _request_search_batch(core: _Core, name: str, searches: Sequence[SearchRequest],
                          consistency: Consistency | None) -> _Request[BatchSearchResult]:
    body = _with_consistency(core, {"searches": list(searches)}, consistency)
    return _Request("read", "POST", f"/collections/{name}/points/search/batch", body=body)


def _request_cluster_status() -> _Request[ClusterStatus]:
    return _Request("read", "GET", "/cluster")


# --- the logic, without I/O ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Refresh:
    """Step: rediscover the leader and the ready replicas (errors ignored). Answer: None."""


@dataclass(frozen=True)
class _Send:
    """Step: send the request to `url`. Answer: the response, or the httpx error it raised."""

    url: str


#: What a driver sends back into `_plan` for a step.
_Answer = Union[httpx.Response, httpx.HTTPError, None]


def _discover(core: _Core) -> Generator[list[str], list[httpx.Response | None], None]:
    """Discovery without I/O, shared by both clients: yields lists of URLs to GET and receives
    the answers (None where the request failed); applies what it learnt."""
    status: ClusterStatus | None = None
    for url in list(core.known):
        (resp,) = yield [f"{url}/cluster"]
        if resp is not None and resp.is_success:
            answer: ClusterStatus = resp.json()
            status = answer
            if answer.get("leader_addr"):
                break
    if status is None:
        raise QuiverConnectionError(f"none of {core.known} answered GET /cluster")
    answers = yield [f"{m['addr'].rstrip('/')}/readyz" for m in status["members"]]
    core.apply(status, [r is not None and r.is_success for r in answers])


def _finish(core: _Core, req: _Request[T], resp: httpx.Response) -> T:
    if resp.is_success:
        out = resp.json()
        if req.kind == "write" and isinstance(out, dict) and "index" in out:
            core.observe(out["index"])
        result: T = out
        return result
    err = _error(resp)
    if err.code in req.missing_codes:
        # A request that names missing codes sets `missing` to a T (None included).
        return cast(T, req.missing)
    raise err


def _plan(core: _Core, req: _Request[T]) -> Generator[_Refresh | _Send, _Answer, T]:
    """The request logic without I/O, shared by both clients: a generator that yields
    :class:`_Refresh` and :class:`_Send` steps, is sent each one's answer, and returns the call's
    result."""
    if core.due():
        yield _Refresh()
    tried: list[str] = []
    last: QuiverError | None = None
    if req.kind == "write":
        while (node := core.write_targets(tried)) is not None:
            tried.append(node)
            got = yield _Send(node)
            if isinstance(got, httpx.Response):
                if got.status_code == 503 and _error(got).code == "not_leader":
                    last = _error(got)
                else:
                    return _finish(core, req, got)
            elif isinstance(got, httpx.ConnectError):
                # Never reached the node, so not applied: another node may take it.
                last = QuiverConnectionError(f"{node}: {got!r}")
            else:
                raise QuiverConnectionError(f"{node}: {got!r} (the write may have been applied)") from got
            if core.discover and len(tried) == 1:
                yield _Refresh()
        raise last or QuiverConnectionError("no node to write to")
    for _ in range(2):
        lease = core.balancer.pick(tried)
        if lease is None:
            break
        try:
            got = yield _Send(lease.url)
        except BaseException:
            # Cancelled, timed out by the caller, or the driver failed: free the lease unjudged.
            lease.release()
            raise
        if isinstance(got, httpx.Response):
            if got.status_code == 503 or (got.status_code == 504 and _error(got).code == "read_timeout"):
                lease.failure()
                last = _error(got)
            else:
                lease.success()
                return _finish(core, req, got)
        elif isinstance(got, (httpx.ConnectError, httpx.ConnectTimeout)):
            lease.failure()
            last = QuiverConnectionError(f"{lease.url}: {got!r}")
        else:
            # Sent, then lost: the read may be what killed the node; not repeated elsewhere.
            lease.failure()
            core.refresh_soon()
            raise QuiverConnectionError(f"{lease.url}: {got!r} (not retried)") from got
        tried.append(lease.url)
    core.refresh_soon()  # rediscover on the next call
    raise last or QuiverConnectionError("no node to read from")


# --- the clients ---------------------------------------------------------------------------------


class _ClientBase:
    """What both clients share: construction, and the properties that read the shared state."""

    _core: _Core

    def __init__(self, urls: str | Sequence[str], *, api_key: str | None = None,
                 policy: Policy | str = Policy.POWER_OF_TWO, discover: bool = True,
                 read_your_writes: bool = False, read_from_leader: bool = False,
                 timeout: float = 120.0, refresh_every: float = 5.0) -> None:
        """`urls`: one or more nodes (the leader and the replicas are discovered from them unless
        `discover=False`). `read_your_writes`: reads carry the highest index this client's
        writes returned as `min_index`."""
        self._core = _Core(urls, api_key=api_key, policy=policy, discover=discover,
                           read_your_writes=read_your_writes, read_from_leader=read_from_leader,
                           timeout=timeout, refresh_every=refresh_every)
        self._open()

    def _open(self) -> None:
        """Sets up the client's own HTTP state (its connections belong to it, not to the core)."""

    @property
    def session_index(self) -> int:
        """The highest index this client's writes returned (its read-your-writes token)."""
        return self._core.session

    @property
    def leader(self) -> str | None:
        """The leader's URL, as last discovered."""
        return self._core.leader

    def read_stats(self) -> list[NodeStats]:
        """Per-node read counters: url, outstanding, latency_ms, served, failures."""
        return self._core.balancer.stats()


class QuiverClient(_ClientBase):
    """Synchronous client. Thread-safe; use one per process."""

    _http: httpx.Client
    _probe: httpx.Client

    def _open(self) -> None:
        self._http = httpx.Client(timeout=self._core.timeout, headers=self._core.headers)
        self._probe = httpx.Client(timeout=2.0, headers=self._core.headers)

    def close(self) -> None:
        self._http.close()
        self._probe.close()

    def __enter__(self) -> QuiverClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def refresh(self) -> None:
        """Rediscovers the leader and the ready replicas now."""

        def get(url: str) -> httpx.Response | None:
            try:
                return self._probe.get(url)
            except httpx.HTTPError:
                return None

        plan = _discover(self._core)
        try:
            urls = next(plan)
            while True:
                urls = plan.send([get(u) for u in urls])
        except StopIteration:
            pass

    def _send(self, req: _Request[Any], url: str) -> httpx.Response | httpx.HTTPError:
        try:
            return self._http.request(req.method, url + req.path, params=req.params, json=req.body)
        except httpx.HTTPError as e:
            return e

    def _run(self, req: _Request[T]) -> T:
        plan = _plan(self._core, req)
        try:
            step = next(plan)
            while True:
                if isinstance(step, _Refresh):
                    try:
                        self.refresh()
                    except QuiverError:
                        pass
                    step = plan.send(None)
                else:
                    step = plan.send(self._send(req, step.url))
        except StopIteration as done:
            result: T = done.value
            return result
        finally:
            plan.close()

    # --- endpoints ------------------------------------------------------------------------------

    def create_collection(self, name: str, dim: int, metric: Metric = "cosine",
                          m: int | None = None, ef_construction: int | None = None,
                          quantization: Quantization | None = None) -> WriteResult:
        """PUT /collections/{name}; the same config again is a no-op (``created`` false),
        another one is 409. ``quantization="int8"`` keeps int8 codes in memory and the
        full vectors on disk; ``"int8_ram"`` walks int8 codes with the full vectors in memory
        (faster search); scores stay exact either way."""
        return self._run(_request_create_collection(name, dim, metric, m, ef_construction,
                                                      quantization))

    def delete_collection(self, name: str, missing_ok: bool = True) -> WriteResult | None:
        """DELETE /collections/{name}; None when it did not exist and `missing_ok`."""
        return self._run(_request_delete_collection(name, missing_ok))

    def compact(self, name: str) -> WriteResult:
        """POST /collections/{name}/compact: rebuild its graph without its tombstones now, on every
        node at the same log index; ``compacted`` says how many it drops."""
        return self._run(_request_compact(name))

    def collection(self, name: str, consistency: Consistency | None = None) -> CollectionInfo:
        """GET /collections/{name}: config, points, tombstones, unindexed, index."""
        return self._run(_request_collection(self._core, name, consistency))

    def collections(self, consistency: Consistency | None = None) -> CollectionList:
        """GET /collections."""
        return self._run(_request_collections(self._core, consistency))

    def upsert(self, name: str, points: Iterable[Point]) -> WriteResult:
        """PUT /collections/{name}/points with ``{"id", "vector", "payload"?}`` dicts."""
        return self._run(_request_upsert(name, points))

    def get_point(self, name: str, id: PointId,
                  consistency: Consistency | None = None) -> PointResult | None:
        """GET /collections/{name}/points/{id}; None when there is no such point."""
        return self._run(_request_get_point(self._core, name, id, consistency))

    def get_points(self, name: str, ids: Sequence[PointId], with_vector: bool = True,
                   consistency: Consistency | None = None) -> GetPointsResult:
        """POST /collections/{name}/points/get: the points that exist among `ids`, in order (no
        points when the collection does not exist)."""
        return self._run(_request_get_points(self._core, name, ids, with_vector, consistency))

    def delete_points(self, name: str, ids: Sequence[PointId] | None = None,
                      filter: Filter | None = None) -> WriteResult:
        """POST /collections/{name}/points/delete by ids or by filter."""
        return self._run(_request_delete_points(name, ids, filter))

    def search(self, name: str, vector: Sequence[float], k: int = 10, *, ef: int | None = None,
               filter: Filter | None = None, with_payload: bool = True, with_vector: bool = False,
               score_threshold: float | None = None, exact: bool = False, cache: bool = True,
               consistency: Consistency | None = None) -> SearchResult:
        """POST /collections/{name}/points/search: ``hits`` best first, and ``index``.
        ``cache=False`` computes the answer afresh instead of using the node's query cache
        (whose answers are never stale: the result is the same either way)."""
        return self._run(_request_search(
            self._core, name, vector, k, ef=ef, filter=filter, with_payload=with_payload,
            with_vector=with_vector, score_threshold=score_threshold, exact=exact, cache=cache,
            consistency=consistency))

    def search_batch(self, name: str, searches: Sequence[SearchRequest],
                     consistency: Consistency | None = None) -> BatchSearchResult:
        """POST /collections/{name}/points/search/batch: one hit list per search, in order."""
        return self._run(_request_search_batch(self._core, name, searches, consistency))

    def cluster_status(self) -> ClusterStatus:
        """GET /cluster from a reader."""
        return self._run(_request_cluster_status())


class AsyncQuiverClient(_ClientBase):
    """Asynchronous client (asyncio): the endpoint methods of :class:`QuiverClient`, as
    coroutines."""

    _loop: asyncio.AbstractEventLoop | None
    _pair: tuple[httpx.AsyncClient, httpx.AsyncClient] | None

    def _open(self) -> None:
        self._loop = None
        self._pair = None

    @classmethod
    def sharing(cls, sync: QuiverClient) -> AsyncQuiverClient:
        """An async client over the same nodes, balancer and session token as `sync` (with
        connections of its own)."""
        me = cls(sync._core.seeds)
        me._core = sync._core
        return me

    def _clients(self) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
        """The HTTP clients of the running event loop (a connection pool belongs to one loop, so
        a client used from a new loop, e.g. a second ``asyncio.run``, gets new ones)."""
        loop = asyncio.get_running_loop()
        if self._pair is None or self._loop is not loop:
            self._loop = loop
            self._pair = (
                httpx.AsyncClient(timeout=self._core.timeout, headers=self._core.headers),
                httpx.AsyncClient(timeout=2.0, headers=self._core.headers),
            )
        return self._pair

    async def aclose(self) -> None:
        if self._pair is not None and self._loop is asyncio.get_running_loop():
            for c in self._pair:
                await c.aclose()
        self._pair = None

    async def __aenter__(self) -> AsyncQuiverClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def refresh(self) -> None:
        """Rediscovers the leader and the ready replicas now (members probed concurrently)."""
        probe = self._clients()[1]

        async def get(url: str) -> httpx.Response | None:
            try:
                return await probe.get(url)
            except httpx.HTTPError:
                return None

        plan = _discover(self._core)
        try:
            urls = next(plan)
            while True:
                urls = plan.send(list(await asyncio.gather(*(get(u) for u in urls))))
        except StopIteration:
            pass

    async def _send(self, req: _Request[Any], url: str) -> httpx.Response | httpx.HTTPError:
        try:
            http, _ = self._clients()
            return await http.request(req.method, url + req.path, params=req.params, json=req.body)
        except httpx.HTTPError as e:
            return e

    async def _run(self, req: _Request[T]) -> T:
        plan = _plan(self._core, req)
        try:
            step = next(plan)
            while True:
                if isinstance(step, _Refresh):
                    try:
                        await self.refresh()
                    except QuiverError:
                        pass
                    step = plan.send(None)
                else:
                    step = plan.send(await self._send(req, step.url))
        except StopIteration as done:
            result: T = done.value
            return result
        finally:
            plan.close()

    # --- endpoints (the same signatures as QuiverClient's; tests/test_types.py checks it) -----

    async def create_collection(self, name: str, dim: int, metric: Metric = "cosine",
                                m: int | None = None, ef_construction: int | None = None,
                                quantization: Quantization | None = None) -> WriteResult:
        """PUT /collections/{name}; the same config again is a no-op (``created`` false),
        another one is 409. ``quantization="int8"`` keeps int8 codes in memory and the
        full vectors on disk; ``"int8_ram"`` walks int8 codes with the full vectors in memory
        (faster search); scores stay exact either way."""
        return await self._run(_request_create_collection(name, dim, metric, m, ef_construction,
                                                            quantization))

    async def delete_collection(self, name: str, missing_ok: bool = True) -> WriteResult | None:
        """DELETE /collections/{name}; None when it did not exist and `missing_ok`."""
        return await self._run(_request_delete_collection(name, missing_ok))

    async def compact(self, name: str) -> WriteResult:
        """POST /collections/{name}/compact: rebuild its graph without its tombstones now, on every
        node at the same log index; ``compacted`` says how many it drops."""
        return await self._run(_request_compact(name))

    async def collection(self, name: str, consistency: Consistency | None = None) -> CollectionInfo:
        """GET /collections/{name}: config, points, tombstones, unindexed, index."""
        return await self._run(_request_collection(self._core, name, consistency))

    async def collections(self, consistency: Consistency | None = None) -> CollectionList:
        """GET /collections."""
        return await self._run(_request_collections(self._core, consistency))

    async def upsert(self, name: str, points: Iterable[Point]) -> WriteResult:
        """PUT /collections/{name}/points with ``{"id", "vector", "payload"?}`` dicts."""
        return await self._run(_request_upsert(name, points))

    async def get_point(self, name: str, id: PointId,
                        consistency: Consistency | None = None) -> PointResult | None:
        """GET /collections/{name}/points/{id}; None when there is no such point."""
        return await self._run(_request_get_point(self._core, name, id, consistency))

    async def get_points(self, name: str, ids: Sequence[PointId], with_vector: bool = True,
                         consistency: Consistency | None = None) -> GetPointsResult:
        """POST /collections/{name}/points/get: the points that exist among `ids`, in order (no
        points when the collection does not exist)."""
        return await self._run(_request_get_points(self._core, name, ids, with_vector, consistency))

    async def delete_points(self, name: str, ids: Sequence[PointId] | None = None,
                            filter: Filter | None = None) -> WriteResult:
        """POST /collections/{name}/points/delete by ids or by filter."""
        return await self._run(_request_delete_points(name, ids, filter))

    async def search(self, name: str, vector: Sequence[float], k: int = 10, *, ef: int | None = None,
                     filter: Filter | None = None, with_payload: bool = True,
                     with_vector: bool = False, score_threshold: float | None = None,
                     exact: bool = False, cache: bool = True,
                     consistency: Consistency | None = None) -> SearchResult:
        """POST /collections/{name}/points/search: ``hits`` best first, and ``index``.
        ``cache=False`` computes the answer afresh instead of using the node's query cache
        (whose answers are never stale: the result is the same either way)."""
        return await self._run(_request_search(
            self._core, name, vector, k, ef=ef, filter=filter, with_payload=with_payload,
            with_vector=with_vector, score_threshold=score_threshold, exact=exact, cache=cache,
            consistency=consistency))

    async def search_batch(self, name: str, searches: Sequence[SearchRequest],
                           consistency: Consistency | None = None) -> BatchSearchResult:
        """POST /collections/{name}/points/search/batch: one hit list per search, in order."""
        return await self._run(_request_search_batch(self._core, name, searches, consistency))

    async def cluster_status(self) -> ClusterStatus:
        """GET /cluster from a reader."""
        return await self._run(_request_cluster_status())
