"""LangChain over quiver with real sentence embeddings, and no model download.

../shared/data/minilm-debian ships Debian package descriptions with their MiniLM embeddings and
1,000 separate queries with theirs. ``PrecomputedEmbeddings`` hands LangChain those vectors, so
the neighbours printed are real semantic neighbours.

    quiver serve &                                   # or: cargo run --release -- serve
    python examples/langchain_debian.py --data ../../../shared/data/minilm-debian --url http://127.0.0.1:7070
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

from langchain_core.embeddings import Embeddings

from quiver_client.langchain import QuiverVectorStore


def read_fvecs(path: Path, limit: int) -> list[list[float]]:
    out = []
    with path.open("rb") as f:
        while len(out) < limit and (head := f.read(4)):
            (dim,) = struct.unpack("<i", head)
            out.append(list(struct.unpack(f"<{dim}f", f.read(4 * dim))))
    return out


class PrecomputedEmbeddings(Embeddings):
    """Embeddings looked up by text (every text this demo embeds ships with its vector)."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.table[t] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.table[text]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../../../shared/data/minilm-debian"))
    ap.add_argument("--url", default="http://127.0.0.1:7070")
    ap.add_argument("--limit", type=int, default=5000)
    ap.add_argument("--queries", type=int, default=3)
    args = ap.parse_args()

    texts = (args.data / "base_texts.txt").read_text().splitlines()[: args.limit]
    vectors = read_fvecs(args.data / "base.fvecs", args.limit)
    queries = (args.data / "query_texts.txt").read_text().splitlines()[: args.queries]
    qvectors = read_fvecs(args.data / "queries.fvecs", args.queries)
    table = dict(zip(texts, vectors)) | dict(zip(queries, qvectors))

    store = QuiverVectorStore(PrecomputedEmbeddings(table), "debian-demo", urls=args.url)
    store.add_texts(texts, [{"row": i} for i in range(len(texts))], ids=[f"pkg-{i}" for i in range(len(texts))])
    for q in queries:
        print(f"\n{q}")
        for doc, score in store.similarity_search_with_score(q, k=3):
            print(f"  {score:.3f}  {doc.page_content[:90]}")
    retriever = store.as_retriever(search_kwargs={"k": 2})
    print("\nretriever:", [d.id for d in retriever.invoke(queries[0])])
    store.delete()  # drop the demo collection


if __name__ == "__main__":
    main()
