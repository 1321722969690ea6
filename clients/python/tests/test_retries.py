"""Which failures the clients send elsewhere, on fake nodes (httpx's MockTransport): a write only
when it provably was not applied, a read only when the first node did no work."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from quiver_client import AsyncQuiverClient, QuiverClient, QuiverConnectionError, QuiverError

NODES = ["http://a:1", "http://b:1"]


def fake(first: Exception | httpx.Response, seen: list[str]) -> httpx.MockTransport:
    """Node a fails with `first`; node b answers every call with index 7."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "a":
            if isinstance(first, Exception):
                raise first
            return first
        return httpx.Response(200, json={"index": 7, "hits": []})

    return httpx.MockTransport(handle)


def refused() -> Exception:
    return httpx.ConnectError("refused")


def lost() -> Exception:
    return httpx.ReadError("connection reset")


def answer(status: int, code: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": code}})


def client(first: Exception | httpx.Response, seen: list[str]) -> QuiverClient:
    c = QuiverClient(NODES, discover=False, policy="round_robin")
    c._http = httpx.Client(transport=fake(first, seen))
    return c


@pytest.mark.parametrize("first, retried", [
    (refused(), True),                    # never reached a: not applied
    (answer(503, "not_leader"), True),    # a refused it: not applied
    (lost(), False),                      # sent, then lost: may have been applied
    (answer(503, "unavailable"), False),  # may or may not have been applied
])
def test_a_write_goes_elsewhere_only_when_not_applied(
        first: Exception | httpx.Response, retried: bool) -> None:
    seen: list[str] = []
    with client(first, seen) as c:
        if retried:
            assert c.upsert("c", [])["index"] == 7 and c.session_index == 7
        else:
            with pytest.raises(QuiverError):
                c.upsert("c", [])
    assert seen == (["a", "b"] if retried else ["a"])


@pytest.mark.parametrize("first, retried", [
    (refused(), True),
    (answer(503, "stale"), True),
    (answer(504, "read_timeout"), True),
    (lost(), False),                         # may be what brought a down
    (answer(504, "unknown"), False),
    (answer(404, "collection_not_found"), False),
])
def test_a_read_goes_elsewhere_only_when_the_first_node_did_no_work(
        first: Exception | httpx.Response, retried: bool) -> None:
    seen: list[str] = []
    with client(first, seen) as c:
        if retried:
            assert c.search("c", [1.0])["index"] == 7
        else:
            with pytest.raises(QuiverError) as e:
                c.search("c", [1.0])
            assert isinstance(e.value, QuiverConnectionError) == isinstance(first, Exception)
        stats = {s["url"]: s for s in c.read_stats()}
    assert seen == (["a", "b"] if retried else ["a"])
    assert stats["http://a:1"]["outstanding"] == 0
    # A node that answered (even with an error of the caller's) is not benched.
    assert stats["http://a:1"]["failures"] == (1 if retried or isinstance(first, Exception) else 0)

def test_the_async_client_follows_the_same_plan() -> None:
    seen: list[str] = []

    async def run() -> int:
        c = AsyncQuiverClient(NODES, discover=False)
        http = httpx.AsyncClient(transport=fake(refused(), seen))
        c._loop, c._pair = asyncio.get_running_loop(), (http, http)
        written = await c.upsert("c", [])
        await http.aclose()
        return written["index"]

    assert asyncio.run(run()) == 7 and seen == ["a", "b"]
