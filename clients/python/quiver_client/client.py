"""Typed sync and async clients for quiver over HTTP (httpx).

Writes go to the leader (found with ``GET /cluster``); a write is sent again only when it
provably never reached a node (connection refused) or a node refused it as not the leader, never
after it may have been applied. Reads are spread over the ready replicas with a
:class:`~quiver_client.Policy` and retried once elsewhere only when the first node did no work:
it could not be connected to, or it answered 503 or a 504 ``read_timeout``. A read whose
connection broke after it was sent is not repeated, since it may be what brought the node down. With ``read_your_writes=True`` the client sends the highest index its writes
returned as ``min_index`` on every read that names no consistency.
"""

from __future__ import annotations

import asyncio
import threading
import time
from urllib.parse import quote
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Union

import httpx

from ._balance import Balancer, Policy

#: A consistency level: "eventual", "linearizable", {"min_index": N} or {"max_lag_ms": T}.
Consistency = Union[str, dict]
PointId = Union[str, int]


class QuiverError(Exception):
    """An error answer from a node, or no node to talk to."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.field = status, code, message, field


class QuiverConnectionError(QuiverError):
    """The request did not complete. For a write, it may or may not have been applied."""

    def __init__(self, message: str):
        super().__init__(0, "connection", message)


@dataclass
class _Request:
    kind: str  # "read" or "write"
    method: str
    path: str
    params: dict = field(default_factory=dict)
    body: Any = None
    #: Error codes that mean "nothing there": the call returns `missing` instead of raising.
    missing_codes: tuple = ()
    missing: Any = None
    transform: Callable[[Any], Any] | None = None


def _error(resp: httpx.Response) -> QuiverError:
    try:
        e = resp.json()["error"]
        return QuiverError(resp.status_code, e["code"], e["message"], e.get("field"))
    except Exception:  # noqa: BLE001 - any undecodable body
        return QuiverError(resp.status_code, "unknown", resp.text)


def _consistency_params(c: Consistency | None) -> dict:
    if c is None:
        return {}
    if isinstance(c, str):
        return {"consistency": c}
    return {k: v for k, v in c.items() if k in ("min_index", "max_lag_ms")}


class _Core:
    """State shared by the sync and async clients: nodes, leader, balancer, session token."""

    def __init__(self, urls, api_key, policy, discover, read_your_writes, read_from_leader,
                 timeout, refresh_every):
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
        self.last_refresh: float | None = None
        self.lock = threading.Lock()

    def observe(self, index: int) -> None:
        with self.lock:
            self.session = max(self.session, index)

    def session_consistency(self) -> dict | None:
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

    def apply(self, status: dict, ready: list[bool]) -> None:
        with self.lock:
            self._apply(status, ready)

    def _apply(self, status: dict, ready: list[bool]) -> None:
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

    # --- requests ---------------------------------------------------------------------------

    def read(self, method, path, consistency=None, body=None, **kw) -> _Request:
        params = _consistency_params(consistency or self.session_consistency())
        return _Request("read", method, path, params=params, body=body, **kw)

    def search_body(self, vector, k, ef, filter, with_payload, with_vector, score_threshold,
                    exact, consistency) -> dict:
        body: dict = {"vector": list(vector), "k": k, "with_payload": with_payload,
                      "with_vector": with_vector, "exact": exact}
        if ef is not None:
            body["ef"] = ef
        if filter is not None:
            body["filter"] = filter
        if score_threshold is not None:
            body["score_threshold"] = score_threshold
        c = consistency or self.session_consistency()
        if c is not None:
            body["consistency"] = c
        return body


class _Operations:
    """Every endpoint, as request specs run by `_run` (sync: a value; async: an awaitable)."""

    _core: _Core

    def __init__(self, urls: str | list[str], *, api_key: str | None = None,
                 policy: Policy | str = Policy.POWER_OF_TWO, discover: bool = True,
                 read_your_writes: bool = False, read_from_leader: bool = False,
                 timeout: float = 120.0, refresh_every: float = 5.0) -> None:
        """`urls`: one or more nodes (the leader and the replicas are discovered from them unless
        `discover=False`). `read_your_writes`: reads carry the highest index this client's
        writes returned as `min_index`."""
        self._core = _Core(urls, api_key, policy, discover, read_your_writes, read_from_leader,
                           timeout, refresh_every)

    def _run(self, req: _Request):  # pragma: no cover - defined by the subclasses
        raise NotImplementedError

    @property
    def session_index(self) -> int:
        """The highest index this client's writes returned (its read-your-writes token)."""
        return self._core.session

    @property
    def leader(self) -> str | None:
        """The leader's URL, as last discovered."""
        return self._core.leader

    def read_stats(self) -> list[dict]:
        """Per-node read counters: url, outstanding, latency_ms, served, failures."""
        return self._core.balancer.stats()

    def create_collection(self, name: str, dim: int, metric: str = "cosine",
                          m: int | None = None, ef_construction: int | None = None):
        """PUT /collections/{name}; the same config again is a no-op, another one is 409."""
        hnsw = {k: v for k, v in (("m", m), ("ef_construction", ef_construction)) if v}
        body = {"dim": dim, "metric": metric, **({"hnsw": hnsw} if hnsw else {})}
        return self._run(_Request("write", "PUT", f"/collections/{name}", body=body))

    def delete_collection(self, name: str, missing_ok: bool = True):
        """DELETE /collections/{name}."""
        codes = ("collection_not_found",) if missing_ok else ()
        return self._run(_Request("write", "DELETE", f"/collections/{name}", missing_codes=codes))

    def collection(self, name: str, consistency: Consistency | None = None):
        """GET /collections/{name}: config, points, tombstones, unindexed, index."""
        return self._run(self._core.read("GET", f"/collections/{name}", consistency))

    def collections(self, consistency: Consistency | None = None):
        """GET /collections."""
        return self._run(self._core.read("GET", "/collections", consistency))

    def upsert(self, name: str, points: Iterable[dict]):
        """PUT /collections/{name}/points with `{"id", "vector", "payload"?}` dicts."""
        body = {"points": list(points)}
        return self._run(_Request("write", "PUT", f"/collections/{name}/points", body=body))

    def get_point(self, name: str, id: PointId, consistency: Consistency | None = None):
        """GET /collections/{name}/points/{id}; None when there is no such point."""
        path = f"/collections/{name}/points/{quote(str(id), safe='')}"
        return self._run(self._core.read(
            "GET", path, consistency,
            missing_codes=("point_not_found", "collection_not_found"), missing=None))

    def get_points(self, name: str, ids: list[PointId], with_vector: bool = True,
                   consistency: Consistency | None = None):
        """POST /collections/{name}/points/get: the points that exist among `ids`, in order
        (`{"points": [...], "index"}`; no points when the collection does not exist)."""
        body: dict = {"ids": list(ids), "with_vector": with_vector}
        c = consistency or self._core.session_consistency()
        if c is not None:
            body["consistency"] = c
        return self._run(_Request("read", "POST", f"/collections/{name}/points/get", body=body,
                                  missing_codes=("collection_not_found",),
                                  missing={"points": [], "index": 0}))

    def delete_points(self, name: str, ids: list[PointId] | None = None, filter: dict | None = None):
        """POST /collections/{name}/points/delete by ids or by filter."""
        body = {k: v for k, v in (("ids", ids), ("filter", filter)) if v is not None}
        return self._run(_Request("write", "POST", f"/collections/{name}/points/delete", body=body))

    def search(self, name: str, vector: list[float], k: int = 10, *, ef: int | None = None,
               filter: dict | None = None, with_payload: bool = True, with_vector: bool = False,
               score_threshold: float | None = None, exact: bool = False,
               consistency: Consistency | None = None):
        """POST /collections/{name}/points/search: `{"hits": [{"id","score","payload"}], "index"}`."""
        body = self._core.search_body(vector, k, ef, filter, with_payload, with_vector,
                                      score_threshold, exact, consistency)
        return self._run(_Request("read", "POST", f"/collections/{name}/points/search", body=body))

    def search_batch(self, name: str, searches: list[dict], consistency: Consistency | None = None):
        """POST /collections/{name}/points/search/batch."""
        body: dict = {"searches": searches}
        c = consistency or self._core.session_consistency()
        if c is not None:
            body["consistency"] = c
        return self._run(_Request("read", "POST", f"/collections/{name}/points/search/batch", body=body))

    def cluster_status(self):
        """GET /cluster from a reader."""
        return self._run(_Request("read", "GET", "/cluster"))


def _discover(core: _Core):
    """Discovery without I/O, shared by both clients: yields lists of URLs to GET and receives
    the answers (None where the request failed); applies what it learnt."""
    status = None
    for url in list(core.known):
        (resp,) = yield [f"{url}/cluster"]
        if resp is not None and resp.is_success:
            status = resp.json()
            if status.get("leader_addr"):
                break
    if status is None:
        raise QuiverConnectionError(f"none of {core.known} answered GET /cluster")
    answers = yield [f"{m['addr'].rstrip('/')}/readyz" for m in status["members"]]
    core.apply(status, [r is not None and r.is_success for r in answers])


def _finish(core: _Core, req: _Request, resp: httpx.Response):
    if resp.is_success:
        out = resp.json()
        if req.kind == "write" and isinstance(out, dict) and "index" in out:
            core.observe(out["index"])
        return req.transform(out) if req.transform else out
    err = _error(resp)
    if err.code in req.missing_codes:
        return req.missing
    raise err


def _plan(core: _Core, req: _Request):
    """The request logic without I/O, shared by both clients: a generator that yields
    ``("refresh", None)`` (answer: None) or ``("send", url)`` (answer: ``(response, error)``) and
    returns the call's result."""
    if core.due():
        yield ("refresh", None)
    tried: list[str] = []
    last: QuiverError | None = None
    if req.kind == "write":
        while (node := core.write_targets(tried)) is not None:
            tried.append(node)
            resp, err = yield ("send", node)
            if err is not None:
                if not isinstance(err, httpx.ConnectError):
                    raise QuiverConnectionError(f"{node}: {err!r} (the write may have been applied)") from err
                # Never reached the node, so not applied: another node may take it.
                last = QuiverConnectionError(f"{node}: {err!r}")
            elif resp.status_code == 503 and _error(resp).code == "not_leader":
                last = _error(resp)
            else:
                return _finish(core, req, resp)
            if core.discover and len(tried) == 1:
                yield ("refresh", None)
        raise last or QuiverConnectionError("no node to write to")
    for _ in range(2):
        lease = core.balancer.pick(tried)
        if lease is None:
            break
        try:
            resp, err = yield ("send", lease.url)
        except BaseException:
            # Cancelled, timed out by the caller, or the driver failed: free the lease unjudged.
            lease.release()
            raise
        if err is not None:
            lease.failure()
            if not isinstance(err, (httpx.ConnectError, httpx.ConnectTimeout)):
                # Sent, then lost: the read may be what killed the node; not repeated elsewhere.
                core.last_refresh = None
                raise QuiverConnectionError(f"{lease.url}: {err!r} (not retried)") from err
            last = QuiverConnectionError(f"{lease.url}: {err!r}")
        elif resp.status_code == 503 or (resp.status_code == 504 and _error(resp).code == "read_timeout"):
            lease.failure()
            last = _error(resp)
        else:
            lease.success()
            return _finish(core, req, resp)
        tried.append(lease.url)
    core.last_refresh = None  # rediscover on the next call
    raise last or QuiverConnectionError("no node to read from")


class QuiverClient(_Operations):
    """Synchronous client. Thread-safe; use one per process."""

    def __init__(self, urls: str | list[str], **settings) -> None:
        super().__init__(urls, **settings)
        self._http = httpx.Client(timeout=self._core.timeout, headers=self._core.headers)
        self._probe = httpx.Client(timeout=2.0, headers=self._core.headers)

    def close(self) -> None:
        self._http.close()
        self._probe.close()

    def __enter__(self) -> "QuiverClient":
        return self

    def __exit__(self, *exc) -> None:
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

    def _run(self, req: _Request):
        plan = _plan(self._core, req)
        try:
            step = next(plan)
            while True:
                if step[0] == "refresh":
                    try:
                        self.refresh()
                    except QuiverError:
                        pass
                    step = plan.send(None)
                    continue
                try:
                    resp = self._http.request(req.method, step[1] + req.path, params=req.params, json=req.body)
                except httpx.HTTPError as e:
                    step = plan.send((None, e))
                else:
                    step = plan.send((resp, None))
        except StopIteration as done:
            return done.value
        finally:
            plan.close()


class AsyncQuiverClient(_Operations):
    """Asynchronous client (asyncio); every endpoint method returns an awaitable."""

    def __init__(self, urls: str | list[str], **settings) -> None:
        super().__init__(urls, **settings)
        self._loop = None
        self._pair: tuple[httpx.AsyncClient, httpx.AsyncClient] | None = None

    @classmethod
    def sharing(cls, sync: QuiverClient) -> "AsyncQuiverClient":
        """An async client over the same nodes, balancer and session token as `sync`."""
        me = cls.__new__(cls)
        me._core = sync._core
        me._loop = None
        me._pair = None
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

    async def __aenter__(self) -> "AsyncQuiverClient":
        return self

    async def __aexit__(self, *exc) -> None:
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

    async def _run(self, req: _Request):
        plan = _plan(self._core, req)
        try:
            step = next(plan)
            while True:
                if step[0] == "refresh":
                    try:
                        await self.refresh()
                    except QuiverError:
                        pass
                    step = plan.send(None)
                    continue
                try:
                    http, _ = self._clients()
                    resp = await http.request(req.method, step[1] + req.path, params=req.params, json=req.body)
                except httpx.HTTPError as e:
                    step = plan.send((None, e))
                else:
                    step = plan.send((resp, None))
        except StopIteration as done:
            return done.value
        finally:
            plan.close()
