"""The Python client against real nodes: leader discovery, balanced reads, sessions, retries,
and the LangChain store's filters, scores, retriever and constructors."""

import time
import uuid

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding

from quiver_client import AsyncQuiverClient, Policy, QuiverClient, QuiverConnectionError, QuiverError
from quiver_client.langchain import QuiverVectorStore


def _points(n, start=0):
    return [{"id": i, "vector": [float(i % 7), float(i % 5), 1.0], "payload": {"i": i}} for i in range(start, start + n)]


def test_bad_input_names_the_field(server):
    with QuiverClient(server.url) as c:
        name = f"t{uuid.uuid4().hex[:8]}"
        c.create_collection(name, 3, "l2")
        with pytest.raises(QuiverError) as e:
            c.upsert(name, [{"id": 1, "vector": [1.0]}])
        assert e.value.status == 400 and e.value.field == "points[0].vector"
        assert c.get_point(name, 12345) is None


def test_compact_drops_tombstones(server):
    with QuiverClient(server.url, read_your_writes=True) as c:
        name = f"t{uuid.uuid4().hex[:8]}"
        c.create_collection(name, 3, "l2")
        c.upsert(name, _points(30))
        c.delete_points(name, ids=[1, 2, 3])
        assert c.collection(name)["tombstones"] == 3
        w = c.compact(name)
        assert w["compacted"] == 3 and w["index"] > 0
        info = c.collection(name)
        assert (info["points"], info["tombstones"]) == (27, 0)
        assert c.compact(name)["compacted"] == 0
        c.delete_collection(name)


@pytest.mark.parametrize("policy", list(Policy))
def test_reads_spread_over_replicas_and_see_own_writes(cluster, policy):
    leader, replicas = cluster
    # Seeded with one replica only: the leader and the other replica are discovered.
    with QuiverClient(replicas[0].url, policy=policy, read_your_writes=True) as c:
        c.refresh()
        assert c.leader == leader.url
        # Readiness is live (a replica under load may miss a probe): wait until both count.
        deadline = time.monotonic() + 30
        while len(c.read_stats()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            c.refresh()
        name = f"t{uuid.uuid4().hex[:8]}"
        c.create_collection(name, 3, "l2")
        w = c.upsert(name, _points(50))
        assert c.session_index == w["index"]
        for _ in range(40):
            # Every read carries min_index, so each replica answers only with the write applied.
            res = c.search(name, [1.0, 1.0, 1.0], 5, exact=True)
            assert len(res["hits"]) == 5 and res["index"] >= w["index"]
        served = {s["url"]: s["served"] for s in c.read_stats()}
        assert set(served) == {r.url for r in replicas}, "reads go to the replicas, not the leader"
        assert sum(served.values()) == 40
        assert all(n > 0 for n in served.values()), f"{policy}: {served}"
        c.delete_collection(name)


async def test_async_client_discovers_and_reads(cluster):
    leader, replicas = cluster
    async with AsyncQuiverClient([leader.url], read_your_writes=True) as c:
        name = f"t{uuid.uuid4().hex[:8]}"
        await c.create_collection(name, 3, "l2")
        await c.upsert(name, _points(20))
        hits = (await c.search(name, [0.0, 0.0, 1.0], 3, exact=True))["hits"]
        assert [h["id"] for h in hits][0] == 0
        info = await c.collection(name)
        assert info["points"] == 20
        assert c.leader == leader.url
        await c.delete_collection(name)


def test_a_dead_replica_is_skipped(tmp_path):
    from conftest import Server

    leader = Server(tmp_path / "l")
    a, b = Server(tmp_path / "a", join=leader.url), Server(tmp_path / "b", join=leader.url)
    try:
        with QuiverClient(leader.url, policy="round_robin", read_your_writes=True) as c:
            c.refresh()
            c.create_collection("d", 3, "l2")
            c.upsert("d", _points(10))
            a.stop()
            for _ in range(10):  # the read that hits the dead replica is retried on the other
                assert len(c.search("d", [1.0, 1.0, 1.0], 3)["hits"]) == 3
            stats = {s["url"]: s for s in c.read_stats()}
            assert stats[a.url]["failures"] >= 1
    finally:
        for s in (b, a, leader):
            s.stop()


def test_vectorstore_filters_scores_retriever_and_from_texts(server):
    emb = DeterministicFakeEmbedding(size=16)
    texts = ["apples are red", "bananas are yellow", "cherries are red", "grapes are green"]
    metas = [{"colour": "red", "n": 1}, {"colour": "yellow", "n": 2}, {"colour": "red", "n": 3}, {"colour": "green", "n": 4}]
    store = QuiverVectorStore.from_texts(texts, emb, metas, collection_name=f"f{uuid.uuid4().hex[:8]}", urls=server.url)
    try:
        red = store.similarity_search("cherries are red", k=4, filter={"colour": "red"})
        assert [d.page_content for d in red][0] == "cherries are red"
        assert {d.metadata["colour"] for d in red} == {"red"} and len(red) == 2
        ranged = store.similarity_search("x", k=4, filter={"must": [{"key": "metadata.n", "range": {"gte": 3}}]})
        assert {d.metadata["n"] for d in ranged} == {3, 4}
        scored = store.similarity_search_with_score("grapes are green", k=2)
        assert scored[0][0].page_content == "grapes are green"
        assert scored[0][1] == pytest.approx(1.0, abs=1e-4) and scored[0][1] >= scored[1][1]
        relevance = store.similarity_search_with_relevance_scores("grapes are green", k=4)
        assert relevance[0][1] == pytest.approx(1.0, abs=1e-4)
        assert all(0.0 <= r <= 1.0 for _, r in relevance)
        # A second store on the same collection reads its metric from the server.
        again = QuiverVectorStore(emb, store.collection_name, urls=server.url, metric="l2")
        assert again.metric == "cosine"
        again.close()
        docs = store.as_retriever(search_kwargs={"k": 1}).invoke("bananas are yellow")
        assert docs[0].page_content == "bananas are yellow"
    finally:
        store.delete()


def test_debian_example_finds_real_neighbours(server, capsys):
    """The README's demo, on the first 500 packages: a query's neighbours come back with scores."""
    import runpy
    import sys
    from pathlib import Path

    data = Path(__file__).resolve().parents[4] / "shared/data/minilm-debian"
    if not data.exists():
        pytest.skip(f"data set not at {data}")
    argv = sys.argv
    sys.argv = ["langchain_debian.py", "--data", str(data), "--url", server.url, "--limit", "500", "--queries", "2"]
    try:
        runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples/langchain_debian.py"), run_name="__main__")
    finally:
        sys.argv = argv
    out = capsys.readouterr().out
    assert "retriever: ['pkg-" in out
    assert out.count("  0.") + out.count("  1.") >= 6, out


async def test_max_marginal_relevance_prefers_diverse_results(server):
    class Fixed(DeterministicFakeEmbedding):
        table: dict = {}

        def embed_documents(self, texts):
            return [self.table[t] for t in texts]

        def embed_query(self, text):
            return self.table[text]

    emb = Fixed(size=2)
    emb.table = {"a": [1.0, 0.0], "a2": [0.99, 0.01], "b": [0.6, 0.8], "q": [1.0, -0.05]}
    store = QuiverVectorStore(emb, f"m{uuid.uuid4().hex[:8]}", urls=server.url)
    try:
        store.add_texts(["a", "a2", "b"], ids=["a", "a2", "b"])
        plain = [d.id for d in store.similarity_search("q", k=2)]
        assert plain == ["a", "a2"]
        # With diversity weighted in, the near-duplicate a2 gives way to b.
        diverse = [d.id for d in store.max_marginal_relevance_search("q", k=2, fetch_k=3, lambda_mult=0.3)]
        assert diverse == ["a", "b"]
        retriever = store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 3, "lambda_mult": 0.3})
        assert [d.id for d in await retriever.ainvoke("q")] == ["a", "b"]
    finally:
        store.delete()


def test_leases_are_released_when_a_read_is_cancelled(server):
    import asyncio

    async def cancelled_reads(c):
        for _ in range(5):
            try:
                await asyncio.wait_for(c.search("nothing-here", [1.0, 0.0], 1), 1e-4)
            except (asyncio.TimeoutError, QuiverError):
                pass

    c = AsyncQuiverClient(server.url, discover=False)
    # Two separate event loops: the client follows the loop it is used from.
    asyncio.run(cancelled_reads(c))
    asyncio.run(cancelled_reads(c))
    assert all(s["outstanding"] == 0 for s in c.read_stats())


def test_a_read_that_broke_a_node_is_not_sent_to_another():
    """Two 'nodes' that read a request and drop the connection unanswered (as a node killed by the
    request would): the read fails after one of them saw it, and the other never does."""
    import socket
    import threading

    seen = []

    def killer(sock):
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.recv(65536)
            seen.append(sock.getsockname()[1])
            conn.close()

    socks = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        threading.Thread(target=killer, args=(s,), daemon=True).start()
        socks.append(s)
    urls = [f"http://127.0.0.1:{s.getsockname()[1]}" for s in socks]
    try:
        with QuiverClient(urls, discover=False, policy="round_robin", timeout=5.0) as c:
            with pytest.raises(QuiverConnectionError):
                c.search("d", [1.0, 0.0, 0.0], 3)
        assert len(seen) == 1, seen
    finally:
        for s in socks:
            s.close()


def test_vectorstore_passes_ef_to_the_server(server):
    """`ef` is an explicit keyword of every search, and a retriever's search_kwargs carry it."""
    emb = DeterministicFakeEmbedding(size=8)
    store = QuiverVectorStore.from_texts(["a", "b", "c"], emb, collection_name=f"e{uuid.uuid4().hex[:8]}", urls=server.url)
    try:
        assert len(store.as_retriever(search_kwargs={"k": 2, "ef": 16}).invoke("a")) == 2
        for search in (
            lambda: store.similarity_search("a", k=1, ef=0),
            lambda: store.similarity_search_with_relevance_scores("a", k=1, ef=0),
            lambda: store.max_marginal_relevance_search("a", k=1, ef=0),
        ):
            with pytest.raises(QuiverError) as e:  # the server saw ef=0 and refused it
                search()
            assert e.value.field == "ef"
    finally:
        store.delete()


def test_vectorstore_creates_its_collection_with_the_quantization_asked(server):
    emb = DeterministicFakeEmbedding(size=16)
    texts = ["apples are red", "bananas are yellow", "grapes are green"]
    name = f"q{uuid.uuid4().hex[:8]}"
    store = QuiverVectorStore.from_texts(texts, emb, collection_name=name, urls=server.url, quantization="int8_ram")
    try:
        assert store.client.collection(name)["config"]["quantization"] == "int8_ram"
        scored = store.similarity_search_with_score("grapes are green", k=1)
        assert scored[0][0].page_content == "grapes are green"
        assert scored[0][1] == pytest.approx(1.0, abs=1e-4)  # rescored with the exact vector
        # A second store on the same collection reads its quantisation from the server.
        again = QuiverVectorStore(emb, name, urls=server.url)
        assert again.quantization == "int8_ram"
        again.close()
    finally:
        store.delete()
