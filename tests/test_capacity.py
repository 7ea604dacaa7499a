"""Per-round capacities: fixed blocks, seeded sampling, and CSV traces (dynamic resources)."""

import pytest

from rabo.capacity import CapacitySchedule, read_trace
from rabo.config import RunConfig
from rabo.errors import ConfigError
from rabo.experiment import build
from rabo.runtime.loop import run


def test_short_lists_spread_in_equal_blocks():
    s = CapacitySchedule((1.0, 0.5, 0.25, 0.125, 0.0625), clients=10)
    assert s.at(0) == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125, 0.0625, 0.0625]
    assert s.at(7) == s.at(0)


def test_sampled_capacities_are_seeded_and_vary_by_round():
    a = CapacitySchedule((1.0, 0.5, 0.25), clients=20, mode="sampled", seed=3)
    b = CapacitySchedule((1.0, 0.5, 0.25), clients=20, mode="sampled", seed=3)
    assert a.at(4) == b.at(4) and a.at(4) != a.at(5)
    assert set(a.at(4)) <= {1.0, 0.5, 0.25}


def _write(tmp_path, rows, header=True):
    path = tmp_path / "trace.csv"
    path.write_text(("round,client,capacity\n" if header else "") +
                    "".join(f"{t},{i},{r}\n" for t, i, r in rows))
    return path


def test_trace_drives_the_submodels_round_by_round(tmp_path):
    rows = [(1, 0, 1.0), (1, 1, 0.25), (2, 0, 0.25), (2, 1, 0.25), (3, 0, 0.5), (3, 1, 1.0)]
    path = _write(tmp_path, rows)
    assert read_trace(path, clients=2, rounds=3) == {1: [1.0, 0.25], 2: [0.25, 0.25],
                                                     3: [0.5, 1.0]}
    exp = build(RunConfig(problem="quadratic", method="rabo", clients=2, rounds=3,
                          capacity_trace=str(path)))
    state = run(exp, None, progress=False)
    assert [m["capacities"] for m in state.history] == [[1.0, 0.25], [0.25, 0.25], [0.5, 1.0]]
    # 16 coordinates in float64, down x, y and y again: a client's bytes follow its width.
    widths = [[16, 4], [4, 4], [8, 16]]
    index = [[0, 16], [16, 16], [32, 0]]
    assert [m["bytes_down"] for m in state.history] == \
        [sum(3 * 8 * w for w in ws) + sum(ix) for ws, ix in zip(widths, index)]
    assert [m["cover_x"] for m in state.history] == [1, 0, 1]


@pytest.mark.parametrize("rows,needle", [
    ([(1, 0, 1.0)], "no row for round 1 client 1"),
    ([(1, 0, 1.0), (1, 1, 1.0), (2, 0, 1.0)], "no row for round 2 client 1"),
    ([(1, 0, 1.0), (1, 1, "big")], "line 3"),
    ([(1, 0, 1.0), (1, 1, 0.0)], "line 3"),
    ([(1, 0, 1.0), (1, 1, 1.0), (1, 1, 0.5)], "appears twice"),
    ([(1, 0, 1.0), (1, 7, 1.0)], "client 7 is outside"),
])
def test_bad_traces_name_the_problem(tmp_path, rows, needle):
    with pytest.raises(ConfigError, match=needle):
        read_trace(_write(tmp_path, rows), clients=2, rounds=2 if "round 2" in needle else 1)


def test_missing_trace_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read capacity trace"):
        read_trace(tmp_path / "nope.csv", clients=2, rounds=1)
