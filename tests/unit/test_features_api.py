"""Online feature reads a feature-store user expects, on two real HTTP apps over loopback (no
Kafka): many keys in one POST /v1/features with a feature selection, each key answered by its
partition's owner (one forwarded request per owner), 404 per unknown key, ages never negative."""

from __future__ import annotations

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

import topologies
from engine.api import build_app
from engine.api.views import ServedWorker
from engine.clock import ManualClock
from engine.features import PROFILE_TS_FIELD
from engine.kafka_io import partition_for
from engine.pipeline import Pipeline, Record
from engine.policy import RulesOnly
from engine.routing import Member, OwnerMap
from engine.state import MemoryStore
from tests.unit.fake_worker import FakeServedWorker

TOPO = topologies.get("fraud")
PARTITIONS = 8
T0 = 1_767_225_600_000
JSON = {"Content-Type": "application/json"}


class Node(FakeServedWorker):
    """A worker's state for the API: the partitions it owns, folded from real events."""

    partitions = PARTITIONS
    clock = ManualClock(T0)

    def __init__(self, name: str, owned: set[int], events: list[dict], owners: OwnerMap,
                 profiles: dict) -> None:
        super().__init__()
        self.worker_id = name
        self.owners = owners
        self.profiles = profiles
        self.pipeline = Pipeline(TOPO, RulesOnly(TOPO.rules, TOPO.features.versioned_name),
                                 ManualClock(T0), topic="t")
        by_partition: dict[int, list[Record]] = {}
        for e in events:
            key = e["card_id"].encode()
            p = partition_for(key, PARTITIONS)
            if p in owned:
                recs = by_partition.setdefault(p, [])
                recs.append(Record("t", p, len(recs), key, orjson.dumps(e), 0))
        for p in owned:
            store = MemoryStore()
            self.pipeline.open(p, store)
            if p in by_partition:
                result = self.pipeline.process({p: by_partition[p]}, profiles)
                store.apply(result.partitions[p].changes)

    @property
    def pipelines(self):
        return self.pipeline.partitions

    def owns(self, partition: int) -> bool:
        return partition in self.pipelines


def _events() -> list[dict]:
    cards = [f"c{i:04d}" for i in range(40)]
    return [{"event_id": f"e{i}", "card_id": cards[i % len(cards)], "merchant_id": f"m{i % 7}",
             "amount": 10.0 + i, "currency": "EUR", "country": "FR", "ts_ms": T0 + i * 1000}
            for i in range(400)]


@pytest.fixture
async def pair():
    events = _events()
    owners = OwnerMap()
    # a profile written *after* the partition's newest event time (a batch job runs on
    # wall-clock time, events carry their own): its age must not go negative
    profiles = {"c0001": {"avg_amount_90d": 20.0, "home_country": "FR",
                          PROFILE_TS_FIELD: T0 + 10**9}}
    a = Node("worker-a", {0, 1, 2, 3}, events, owners, profiles)
    b = Node("worker-b", {4, 5, 6, 7}, events, owners, profiles)
    clients = []
    for node in (a, b):
        client = TestClient(TestServer(build_app(node, None, "tok"), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
    for node, client, parts in ((a, clients[0], {0, 1, 2, 3}), (b, clients[1], {4, 5, 6, 7})):
        url = str(client.make_url("")).rstrip("/")
        owners.apply(node.worker_id, Member(node.worker_id, url, frozenset(parts), 1).encode())
    yield a, b, clients[0], clients[1], events
    for client in clients:
        await client.close()


AUTH = {"Authorization": "Bearer tok", **JSON}


async def _post(client: TestClient, body: object) -> tuple[int, dict]:
    resp = await client.post("/v1/features", data=orjson.dumps(body), headers=AUTH)
    return resp.status, await resp.json()


async def test_the_fake_has_what_the_api_reads(pair) -> None:
    a, b, ca, cb, events = pair
    assert isinstance(a, ServedWorker) and isinstance(b, ServedWorker)


async def test_many_keys_are_answered_by_their_owners_in_request_order(pair) -> None:
    a, b, ca, cb, events = pair
    cards = sorted({e["card_id"] for e in events})
    keys = [*cards[:12], "c9999", cards[0]]  # an unknown key and a repeated one
    status, doc = await _post(ca, {"keys": keys, "features": ["count_1h", "sum_1h"]})
    assert status == 200
    assert doc["feature_set"] == TOPO.features.versioned_name
    assert doc["features"] == ["count_1h", "sum_1h"]
    results = doc["results"]
    assert [r["key"] for r in results] == keys
    served = {r["served_by"] for r in results}
    assert served == {"worker-a", "worker-b"}  # half of them forwarded to b
    for r in results:
        p = partition_for(r["key"].encode(), PARTITIONS)
        assert r["partition"] == p
        assert r["served_by"] == ("worker-a" if p < 4 else "worker-b")
        if r["key"] == "c9999":
            assert (r["status"], r["error"]) == (404, "unknown key")
            continue
        assert r["status"] == 200 and set(r["features"]) == {"count_1h", "sum_1h"}
        assert set(r["ages_ms"]) == {"count_1h", "sum_1h"}
        # the same answer as the single-key route on the owner
        owner = ca if p < 4 else cb
        single = await owner.get(f"/v1/features/{r['key']}?features=count_1h,sum_1h",
                                 headers=AUTH)
        one = await single.json()
        assert single.status == 200 and one["features"] == r["features"]
        assert one["ages_ms"] == r["ages_ms"]
    # window counts are the events of each card in the last hour of its partition's time
    by_card = {r["key"]: r for r in results if r["status"] == 200}
    for card in cards[:12]:
        assert by_card[card]["features"]["count_1h"] == sum(e["card_id"] == card
                                                            for e in events)
    # asking b gives the same results (a answers a's keys now)
    assert (await _post(cb, {"keys": keys, "features": ["count_1h", "sum_1h"]}))[1][
        "results"] == results


async def test_all_features_by_default_and_ages_never_negative(pair) -> None:
    a, b, ca, cb, events = pair
    status, doc = await _post(ca, {"keys": ["c0001", "c0002"]})
    assert status == 200 and doc["features"] == list(TOPO.features.names)
    for r in doc["results"]:
        assert set(r["features"]) == set(TOPO.features.names)
        for name, age in r["ages_ms"].items():
            assert age is None or age >= 0, (r["key"], name, age)
            if r["features"][name] is None:
                assert age is None, (name, age)  # no value, no age
    resp = await ca.get("/v1/features/c0001", headers=AUTH)
    one = await resp.json()
    assert resp.status == 200
    # c0001 has a profile written after the newest event time: the old answer was negative
    assert one["features"]["amount_over_avg"] is None and one["ages_ms"]["amount_over_avg"] \
        is None
    assert all(age is None or age >= 0 for age in one["ages_ms"].values())


async def test_unknown_keys_are_404_on_the_single_key_route(pair) -> None:
    a, b, ca, cb, events = pair
    for client in (ca, cb):
        for key in ("c9999", "c9998"):  # one owned here, or forwarded
            resp = await client.get(f"/v1/features/{key}", headers=AUTH)
            assert resp.status == 404 and (await resp.json())["error"] == "unknown key"


@pytest.mark.parametrize("body, status, error", [
    ({"keys": []}, 400, "keys: 1 to 500 keys per request"),
    ({"keys": ["c1"] * 501}, 400, "keys: 1 to 500 keys per request"),
    ({"keys": ["a b"]}, 400, "invalid key 'a b'"),
    ({"keys": [1]}, 400, "invalid key '1'"),
    ({"keys": [None]}, 400, "invalid key 'None'"),
    ({"keys": ["c1"], "features": ["nope"]}, 400, "unknown feature 'nope'"),
    ({"keys": ["c1"], "features": "count_1h"}, 400, "features must be a list"),
    ({"key": "c1"}, 400, "body must be"),
    ([1, 2], 400, "body must be"),
])
async def test_bad_requests_are_400_with_the_reason(pair, body, status, error) -> None:
    a, b, ca, cb, events = pair
    got, doc = await _post(ca, body)
    assert got == status and doc["error"].startswith(error), doc
    assert doc["request_id"]


async def test_the_batch_route_needs_the_token_and_json(pair) -> None:
    a, b, ca, cb, events = pair
    resp = await ca.post("/v1/features", data=b'{"keys": ["c1"]}', headers=JSON)
    assert resp.status == 401
    resp = await ca.post("/v1/features", data=b"keys=c1",
                         headers={"Authorization": "Bearer tok"})
    assert resp.status == 415
    resp = await ca.post("/v1/features", data=b"{nope", headers=AUTH)
    assert resp.status == 400


async def test_a_silent_owner_is_a_per_key_503(pair) -> None:
    a, b, ca, cb, events = pair
    await cb.close()  # worker b is gone; its member record still claims 4-7
    keys = [k for k in ("c0000", "c0001", "c0002", "c0003", "c0004", "c0005")]
    status, doc = await _post(ca, {"keys": keys})
    assert status == 200
    for r in doc["results"]:
        p = partition_for(r["key"].encode(), PARTITIONS)
        if p < 4:
            assert r["status"] in (200, 404)
        else:
            assert (r["status"], r["error"]) == (503, "the key's owner did not answer")
    assert {r["status"] for r in doc["results"]} >= {503}
