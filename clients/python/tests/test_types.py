"""The typed results: every endpoint's answer from a real node has exactly the shape its
``TypedDict`` in ``quiver_client.types`` says (so the types follow the server), and the sync and
async clients offer the same typed methods. ``mypy --strict`` also checks this file, so the
``assert_type`` calls pin each method's static return type."""

from __future__ import annotations

import inspect
import types
import typing
import uuid
from typing import Any, Literal, Union

from typing_extensions import assert_type

from conftest import Server
from quiver_client import (
    AsyncQuiverClient,
    BatchSearchResult,
    ClusterStatus,
    CollectionInfo,
    CollectionList,
    GetPointsResult,
    Hit,
    NodeStats,
    Point,
    PointResult,
    QuiverClient,
    SearchResult,
    WriteResult,
)


def conforms(value: object, tp: Any, at: str = "result") -> None:
    """Fails unless `value` (decoded JSON) has the type `tp`: a TypedDict with exactly its
    required keys and no unknown ones, a list, a union, a literal or a plain JSON value."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return
    if tp is type(None):
        assert value is None, f"{at}: {value!r} is not None"
    elif origin in (Union, types.UnionType):
        errors = []
        for arm in args:
            try:
                conforms(value, arm, at)
            except AssertionError as e:
                errors.append(str(e))
            else:
                return
        raise AssertionError(f"{at}: {value!r} matches no arm of {tp}: {errors}")
    elif origin is Literal:
        assert value in args, f"{at}: {value!r} not in {args}"
    elif typing.is_typeddict(tp):
        assert isinstance(value, dict), f"{at}: {value!r} is not an object"
        keys = set(value)
        assert tp.__required_keys__ <= keys, f"{at}: {tp.__name__} lacks {tp.__required_keys__ - keys}"
        hints = typing.get_type_hints(tp)
        assert keys <= set(hints), f"{at}: {tp.__name__} does not know {keys - set(hints)}"
        for key, item in value.items():
            conforms(item, hints[key], f"{at}.{key}")
    elif origin is list:
        assert isinstance(value, list), f"{at}: {value!r} is not a list"
        for i, item in enumerate(value):
            conforms(item, args[0], f"{at}[{i}]")
    elif origin is dict:
        assert isinstance(value, dict), f"{at}: {value!r} is not an object"
    elif tp is float:
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{at}: {value!r}"
    elif tp is int:
        assert isinstance(value, int) and not isinstance(value, bool), f"{at}: {value!r}"
    else:
        assert isinstance(value, tp), f"{at}: {value!r} is not {tp}"


def test_sync_and_async_clients_have_the_same_endpoints() -> None:
    shared = [n for n, f in vars(AsyncQuiverClient).items()
              if inspect.iscoroutinefunction(f) and not n.startswith("_") and n != "aclose"]
    assert len(shared) == 13, shared  # refresh and the 12 endpoints
    for name in shared:
        sync, coro = getattr(QuiverClient, name), getattr(AsyncQuiverClient, name)
        assert not inspect.iscoroutinefunction(sync), name
        # The same parameters, defaults and return annotation (the async one awaits to it).
        assert inspect.signature(sync) == inspect.signature(coro), name
        assert sync.__doc__ == coro.__doc__ or name == "refresh", name
    public = {n for n in vars(QuiverClient) if not n.startswith("_")}
    assert public - set(shared) == {"close"}


def test_every_result_has_its_typed_shape(server: Server) -> None:
    name = f"t{uuid.uuid4().hex[:8]}"
    points: list[Point] = [
        {"id": 1, "vector": [1.0, 0.0, 0.0], "payload": {"lang": "en", "year": 2021}},
        {"id": "b", "vector": [0.0, 1.0, 0.0]},
        {"id": 3, "vector": [0.0, 0.0, 1.0], "payload": None},
    ]
    with QuiverClient(server.url, read_your_writes=True) as c:
        created = c.create_collection(name, 3, "cosine", m=8)
        assert_type(created, WriteResult)
        conforms(created, WriteResult)
        assert created["created"] is True

        written = c.upsert(name, points)
        assert_type(written, WriteResult)
        conforms(written, WriteResult)
        assert written.get("upserted") == 3 and c.session_index == written["index"]

        found = c.search(name, [0.9, 0.1, 0.0], 3, with_vector=True, exact=True)
        assert_type(found, SearchResult)
        conforms(found, SearchResult)
        best = found["hits"][0]
        assert_type(best, Hit)
        assert (best["id"], best.get("payload")) == (1, {"lang": "en", "year": 2021})
        assert best["score"] > found["hits"][1]["score"] and len(best.get("vector", [])) == 3
        # The query cache never changes an answer: bypassing it gives the same hits.
        again = c.search(name, [0.9, 0.1, 0.0], 3, with_vector=True, exact=True, cache=False)
        assert again["hits"] == found["hits"]
        # The server leaves out what it has no value for: no payload, no vector.
        bare = c.search(name, [0.0, 1.0, 0.0], 1, with_payload=False)["hits"][0]
        conforms(bare, Hit)
        assert set(bare) == {"id", "score"}

        batch = c.search_batch(name, [{"vector": [1.0, 0.0, 0.0], "k": 1},
                                      {"vector": [0.0, 1.0, 0.0], "k": 2, "exact": True}])
        assert_type(batch, BatchSearchResult)
        conforms(batch, BatchSearchResult)
        assert [len(hits) for hits in batch["results"]] == [1, 2]

        point = c.get_point(name, "b")
        assert_type(point, PointResult | None)
        conforms(point, PointResult)
        assert point is not None and point["payload"] is None and point["index"] >= written["index"]

        many = c.get_points(name, [3, "nope", 1], with_vector=False)
        assert_type(many, GetPointsResult)
        conforms(many, GetPointsResult)
        assert [p["id"] for p in many["points"]] == [3, 1]

        filtered = c.search(name, [1.0, 0.0, 0.0], 3,
                            filter={"must": [{"key": "year", "range": {"gte": 2000}}],
                                    "must_not": [{"key": "lang", "match": {"any": ["de"]}}]})
        assert [h["id"] for h in filtered["hits"]] == [1]

        info = c.collection(name)
        assert_type(info, CollectionInfo)
        conforms(info, CollectionInfo)
        assert info["config"]["hnsw"]["m"] == 8 and info["points"] == 3
        assert "quantization" not in info["config"]

        quantized = f"{name}q"
        c.create_collection(quantized, 3, "cosine", quantization="int8")
        c.upsert(quantized, points)
        info = c.collection(quantized)
        conforms(info, CollectionInfo)
        assert info["config"]["quantization"] == "int8"
        hit = c.search(quantized, [0.0, 0.0, 1.0], 1, with_vector=True)["hits"][0]
        assert hit["id"] == 3 and hit["vector"] == [0.0, 0.0, 1.0] and hit["score"] == 1.0
        c.delete_collection(quantized)

        listed = c.collections()
        assert_type(listed, CollectionList)
        conforms(listed, CollectionList)
        assert name in {i["name"] for i in listed["collections"]}

        deleted = c.delete_points(name, filter={"must": [{"key": "lang", "match": {"value": "en"}}]})
        assert_type(deleted, WriteResult)
        conforms(deleted, WriteResult)
        assert deleted.get("deleted") == 1

        status = c.cluster_status()
        assert_type(status, ClusterStatus)
        conforms(status, ClusterStatus)
        assert status["members"][0]["addr"] == server.url

        stats = c.read_stats()
        assert_type(stats, list[NodeStats])
        conforms(stats, list[NodeStats])

        dropped = c.delete_collection(name)
        assert_type(dropped, WriteResult | None)
        conforms(dropped, WriteResult)
        assert c.delete_collection(name) is None


async def test_async_results_are_typed_alike(server: Server) -> None:
    name = f"t{uuid.uuid4().hex[:8]}"
    async with AsyncQuiverClient(server.url, read_your_writes=True) as c:
        await c.create_collection(name, 2, "l2")
        await c.upsert(name, [{"id": 7, "vector": [1.0, 2.0], "payload": {"k": "v"}}])
        found = await c.search(name, [1.0, 2.0], 1)
        assert_type(found, SearchResult)
        conforms(found, SearchResult)
        assert found["hits"][0]["score"] == 0.0
        missing = await c.get_point(name, 8)
        assert_type(missing, PointResult | None)
        assert missing is None
        await c.delete_collection(name)
