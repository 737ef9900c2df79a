from __future__ import annotations

import topologies
from engine.features import PROFILE_TS_FIELD
from engine.windows import EntityTiles

FS = topologies.get("fraud").features


def test_ages_by_kind_of_feature():
    ent = EntityTiles()
    ent.add(1_000, 5.0, "m1", 60_000)
    ages = FS.ages(4_000, {"velocity": ent}, {"avg_amount_90d": 1.0, "home_country": "FR",
                                              PROFILE_TS_FIELD: 500})
    assert ages["count_10m"] == ages["secs_since_last"] == 3_000
    assert ages["amount_over_avg"] == ages["is_foreign"] == 3_500
    assert ages["amount"] == ages["hour_of_day"] == 0
    assert set(ages) == set(FS.names)


def test_ages_unknown_without_state_or_profile():
    ages = FS.ages(4_000, {"velocity": EntityTiles()}, None)
    assert ages["count_1h"] is None and ages["amount_over_avg"] is None
