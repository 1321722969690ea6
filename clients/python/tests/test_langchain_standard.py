"""LangChain's own standard integration tests for vector stores (sync and async), against a real
quiver node."""

import uuid

import pytest
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from quiver_client.langchain import QuiverVectorStore


class TestQuiverStandard(VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self, server):  # type: ignore[override]
        store = QuiverVectorStore(self.get_embeddings(), f"lc-{uuid.uuid4().hex[:12]}", urls=server.url)
        try:
            yield store
        finally:
            store.delete()
            store.client.close()
