"""Fixtures: the herald topologies, started once per test session.

``topology`` runs a test against both ``herald dev`` and the Redis
topology (``herald ingest`` + ``herald gateway`` + ``redis-server``). Tests
share the servers, so each uses channel names of its own (``chan()``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from harness import HeraldCluster, HeraldDev, Topology
from herald_client import Herald


def chan(prefix: str = "t") -> str:
    """A channel name no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeraldDev]:
    t = HeraldDev(tmp_path_factory.mktemp("herald-dev"))
    yield t
    t.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeraldCluster]:
    t = HeraldCluster(tmp_path_factory.mktemp("herald-redis"))
    yield t
    t.stop()


@pytest.fixture(params=["dev", "redis"])
def topology(request: pytest.FixtureRequest) -> Topology:
    t: Topology = request.getfixturevalue("dev" if request.param == "dev" else "cluster")
    return t


@pytest.fixture
def herald(topology: Topology) -> Iterator[Herald]:
    with Herald(topology.api_url, topology.api_key, timeout=5, retries=2, backoff=0.05) as h:
        yield h


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
