"""A user's own topology (#17 items 1 and 5): a package outside the repository, never
installed, run with `streamwise worker mypkg.topology:TOPOLOGY` from the directory that holds
it, against the real broker; its decisions come out, its table answers over HTTP, and its
/openapi.json describes its own event contract."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.integration.worker_harness import (
    WorkerProcess,
    consume_all,
    create_topics,
    produce,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2
MINUTE_MS = 60_000

# A topology with nothing of fraud in it: its own contract, key, table, features and rules,
# and no models (the rules decide).
TOPOLOGY_SOURCE = '''
from pydantic import BaseModel, ConfigDict, Field

from engine import (EventFeature, FeatureSet, Rules, Thresholds, TileTable, TimeSettings,
                    Topology, Tumbling, WindowFeature)


class Click(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, frozen=True, extra="ignore", strict=True)

    click_id: str = Field(min_length=1, max_length=64)
    user: str = Field(min_length=1, max_length=64)
    price: float = Field(ge=0, lt=1e6)
    at_ms: int = Field(ge=0, lt=1 << 53)


ACTIVITY = TileTable(name="activity", tile_ms=60_000, value_field="price", retain_ms=3_600_000)
HOUR = Tumbling(3_600_000)


def risk(f):
    return (0.9, ("burst",)) if (f.get("clicks_1h") or 0) >= 5 else (0.1, ())


TOPOLOGY = Topology(
    name="clicks", schema=Click, key_field="user", event_id_field="click_id",
    time_field="at_ms", dedup_ttl_ms=3_600_000,
    time=TimeSettings(max_out_of_orderness_ms=1_000, allowed_lateness_ms=60_000),
    tables=(ACTIVITY,),
    features=FeatureSet(name="clicks", version=1, features=(
        WindowFeature("clicks_1h", "activity", "count", HOUR),
        WindowFeature("spend_1h", "activity", "sum", HOUR),
        EventFeature("price", lambda e: e.price))),
    rules=Rules(version="v1", evaluate=risk,
                thresholds=Thresholds(review_at=0.5, decline_at=0.8)),
)
'''


def _package(root: Path) -> Path:
    pkg = root / "mypkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "topology.py").write_text(TOPOLOGY_SOURCE)
    return root


def _clicks(n_users: int, per_user: int) -> list[dict]:
    base = 1_767_225_600_000  # an hour boundary: every click falls in one tumbling hour
    return [{"click_id": f"k{u}-{i}", "user": f"u{u}", "price": 1.5 * (i + 1),
             "at_ms": base + (i * n_users + u) * 1_000}
            for i in range(per_user) for u in range(n_users)]


async def _decisions(broker: str, topic: str, n: int, worker: WorkerProcess,
                     timeout_s: float = 120.0) -> list:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        worker.check_alive("waiting for decisions")
        records = await consume_all(broker, topic)
        if len(records) >= n:
            return records
        await asyncio.sleep(1.0)
    raise AssertionError(f"{topic}: fewer than {n} decisions after {timeout_s:.0f}s\n"
                         + worker.log_tail())


async def test_a_topology_from_a_package_outside_the_repo_runs_end_to_end(
        kafka_bootstrap: str, unique_prefix: str, tmp_path: Path) -> None:
    root = _package(tmp_path / "project")
    events_topic = f"{unique_prefix}clicks.events"
    await create_topics(kafka_bootstrap, [(events_topic, PARTITIONS, {})])
    worker = WorkerProcess(kafka_bootstrap, unique_prefix, tmp_path / "state",
                           tmp_path / "worker.log", partitions=PARTITIONS,
                           topology="mypkg.topology:TOPOLOGY", cwd=root)
    clicks = _clicks(n_users=4, per_user=6)
    try:
        worker.start()
        await worker.wait_ready()
        await produce(kafka_bootstrap, events_topic,
                      [(c["user"].encode(), orjson.dumps(c)) for c in clicks])
        records = await _decisions(kafka_bootstrap, f"{unique_prefix}clicks.decisions",
                                   len(clicks), worker)
        decided = {orjson.loads(r.value)["event_id"]: orjson.loads(r.value) for r in records}
        assert set(decided) == {c["click_id"] for c in clicks}
        # each user's 5th and 6th clicks of the hour fire the rule (count includes the click)
        fired = {eid for eid, d in decided.items() if d["decision"] == "decline"}
        assert fired == {f"k{u}-{i}" for u in range(4) for i in (4, 5)}, sorted(fired)
        assert {d["path"] for d in decided.values()} == {"fallback:rules"}

        async with aiohttp.ClientSession() as http:
            async with http.get(f"{worker.url}/v1/tables/activity/u2") as resp:
                assert resp.status == 200, await resp.text()
                body = await resp.json()
            async with http.get(f"{worker.url}/v1/tables/activity/nobody") as resp:
                assert resp.status == 404
            async with http.get(f"{worker.url}/openapi.json") as resp:
                assert resp.status == 200
                doc = await resp.json()
        assert (body["table"], body["key"]) == ("activity", "u2")
        assert body["value"]["count"] == 6
        (tile,) = body["windows"]  # 23 s of clicks: one 1-minute tile
        assert (tile["value"]["count"], tile["value"]["sum"], tile["value"]["max"]) == (
            6, 1.5 * sum(range(1, 7)), 9.0)
        # the HTTP contract is this topology's: its event is the body of POST /v1/score
        schemas = doc["components"]["schemas"]
        assert "FraudEvent" not in schemas
        assert set(schemas["ClicksEvent"]["required"]) == {"click_id", "user", "price", "at_ms"}
        score_body = doc["paths"]["/v1/score"]["post"]["requestBody"]["content"]
        assert score_body["application/json"]["schema"] == {"$ref": "#/components/schemas/"
                                                                    "ClicksEvent"}
        wanted = schemas["FeaturesRequest"]["properties"]["features"]["items"]["enum"]
        assert wanted == ["clicks_1h", "spend_1h", "price"]
    finally:
        code = worker.stop()
    assert code == 0, worker.log_tail()


@pytest.mark.parametrize("spec, message", [
    ("mypkg.topology:NOPE", "module mypkg.topology has no attribute 'NOPE'"),
    ("mypkg.topology:ACTIVITY", "of type TileTable, not an engine.Topology"),
    ("mypkg.broken:TOPOLOGY", "importing mypkg.broken failed: NameError"),
    ("otherpkg.topology:TOPOLOGY", "no module named 'otherpkg'"),
])
def test_a_topology_that_cannot_be_loaded_is_one_line_and_exit_2(tmp_path: Path, spec: str,
                                                                 message: str) -> None:
    root = _package(tmp_path)
    (root / "mypkg" / "broken.py").write_text("TOPOLOGY = undefined_name\n")
    proc = subprocess.run([sys.executable, "-m", "engine", "worker", spec, "--broker",
                           "127.0.0.1:1"], capture_output=True, text=True, timeout=60,
                          cwd=root)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"streamwise: unknown topology {spec!r}: ") and message in lines[0]
