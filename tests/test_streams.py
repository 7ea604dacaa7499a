"""The registry of random streams (rabo.streams): fixed keys, so fixed-seed runs stay
the same."""

import numpy as np

from rabo import server, streams
from rabo.capacity import CapacitySchedule


def test_stream_tags_are_distinct_and_keep_the_values_past_runs_drew_from():
    tags = {"participants": streams.PARTICIPANTS, "masks": streams.MASKS,
            "capacities": streams.CAPACITIES, "quadratic": streams.QUADRATIC,
            "fewshot_shards": streams.FEWSHOT_SHARDS,
            "fewshot_test": streams.FEWSHOT_TEST}
    assert tags == {"participants": 0xFA1, "masks": 0x5E7, "capacities": 0xCA9,
                    "quadratic": 0x9AD, "fewshot_shards": 0x0A1, "fewshot_test": 0xE7A1}
    assert len(set(tags.values())) == len(tags)
    assert streams.PHASES == {"inner": 1, "outer": 2}


def test_client_rng_draws_from_seed_round_client_phase():
    got = streams.client_rng(3, 4, 5, "outer").random(3)
    np.testing.assert_array_equal(got, np.random.default_rng([3, 4, 5, 2]).random(3))


def test_participants_and_sampled_capacities_draw_from_their_streams():
    rng = np.random.default_rng([7, 2, 0xFA1])
    chosen = sorted(rng.choice(10, size=4, replace=False).tolist())
    assert server.participants(10, 0.4, 0.0, seed=7, round=2) == (chosen, [])
    schedule = CapacitySchedule((1.0, 0.5, 0.25), 6, "sampled", 7)
    draw = np.random.default_rng([7, 2, 0xCA9]).integers(0, 3, size=6)
    assert schedule.at(2) == [(1.0, 0.5, 0.25)[k] for k in draw]
