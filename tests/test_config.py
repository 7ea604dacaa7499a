"""Config resolution: defaults < --config < flags < --set into one RunConfig, and the exact
config.json it writes (committed runs in results/ are reused only if theirs matches)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rabo.cli import main
from rabo.config import differing_keys

ROOT = Path(__file__).resolve().parents[1]
OMNIGLOT = ROOT.parent / "shared" / "data" / "omniglot"

PINNED_CONFIG_JSON = """\
{
  "problem": "quadratic",
  "method": "rafbo",
  "rounds": 3,
  "clients": 4,
  "capacities": [
    1.0,
    0.5
  ],
  "capacity_mode": "fixed",
  "capacity_trace": null,
  "seed": 2,
  "policy": "coverage",
  "estimator": "fd-dir",
  "inner_steps": 5,
  "inner_lr": 0.4,
  "outer_steps": 1,
  "outer_lr": 0.5,
  "terms": 20,
  "step": 0.45,
  "mu": 0.01,
  "coords": null,
  "perturb": "auto",
  "difference": "forward",
  "eval_every": 2,
  "checkpoint_every": 2,
  "participation": 0.5,
  "fail_prob": 0.0,
  "adapt_steps": 0,
  "data_dir": null,
  "threads": null,
  "device": "cpu",
  "batch_clients": null,
  "problem_options": {
    "dim": 4,
    "coupling": "dense",
    "lam": 0.1,
    "heterogeneity": 1.0,
    "dtype": "float64"
  },
  "policy_options": {
    "rotate": false
  }
}
"""


def test_config_json_of_a_run_is_byte_for_byte_the_pinned_one(tmp_path):
    """Every layer (a config file with a [method.NAME] table, flags, --set of fields, problem
    and policy options), the method preset and the problem's defaults end up in config.json
    with these bytes: a refactor of config resolution must not change them."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('problem = "quadratic"\nrounds = 3\nseed = 2\n[problem_options]\ndim = 4\n'
                   '[method.rafbo]\nmu = 0.01\n')
    out = tmp_path / "run"
    assert main(["run", "--config", str(cfg), "--method", "rafbo", "--clients", "4",
                 "--capacities", "1,0.5", "--participation", "0.5", "--set", "policy=coverage",
                 "--set", "problem.coupling=dense", "--set", "eval_every=2",
                 "--set", "policy.rotate=false", "--out", str(out), "--no-progress"]) == 0
    assert (out / "config.json").read_text() == PINNED_CONFIG_JSON


@pytest.mark.skipif(not OMNIGLOT.is_dir(), reason="needs the Omniglot subset")
@pytest.mark.parametrize("run", ["rafbo-cov", "fedmbo-seed1"])
def test_committed_fewshot_runs_resolve_to_their_config_json(run, monkeypatch):
    """The grid of results/README.md's command resolves, for a committed run, the config its
    config.json holds (runtime fields such as threads aside, as `rabo reproduce` compares)."""
    from rabo.experiment import build
    from rabo.reproduce import RUNTIME_FIELDS, fewshot_base, seed_runs, setting

    monkeypatch.chdir(ROOT)
    base, file = fewshot_base("../shared/data/omniglot", False, 0, None)
    method = run.removesuffix("-seed1")
    config = seed_runs(method, setting(base, "5w1s", file, method=method), 2)[run]
    saved = json.loads((ROOT / "results" / "table2" / "5w1s" / run / "config.json").read_text())
    now = json.loads(json.dumps(build(config).config.to_dict()))
    assert list(now) == list(saved)
    assert differing_keys(saved, now, RUNTIME_FIELDS) == []


def test_differing_keys_name_options_by_their_flat_keys():
    """A problem or policy option that differs, or that only the saved config has, is named
    as "problem.X" / "policy.X"; fields by their names; ignored fields and equal options not."""
    saved = {"rounds": 3, "threads": 1, "problem_options": {"lam": 0.2, "ways": 5, "old": 1},
             "policy_options": {}}
    now = {"rounds": 4, "threads": 2, "problem_options": {"lam": 0.5, "ways": 5},
           "policy_options": {"segments": [[0.0, 0.5]]}}
    assert differing_keys(saved, now, ("threads",)) == [
        "policy.segments", "problem.lam", "problem.old", "rounds"]
    assert differing_keys({**saved, "problem_options": "edited"}, now, ("threads",)) == [
        "policy.segments", "problem.lam", "problem.ways", "rounds"]


FLAGS = ["quadratic", "--method", "fedmbo", "--rounds", "3", "--clients", "4",
         "--capacities", "1,0.5", "--capacity-mode", "sampled", "--capacity-trace", "t.csv",
         "--seed", "5", "--data-dir", "d", "--threads", "2", "--device", "cuda:1",
         "--checkpoint-every", "2", "--participation", "0.5", "--fail-prob", "0.25"]


@pytest.mark.parametrize("command", [["run"], ["flower", "local"], ["flower", "simulate"]])
def test_each_config_flag_sets_its_field_in_run_and_both_flower_modes(command):
    """A flag sets the RunConfig field its argparse destination names; ``rabo flower local``
    and ``simulate`` take exactly the options of ``rabo run``."""
    from rabo.cli import config_from_args, flag_values, make_parser

    args = make_parser().parse_args([*command, *FLAGS])
    assert sorted(flag_values(args)) == sorted(
        ["problem", "method", "rounds", "clients", "capacities", "capacity_mode",
         "capacity_trace", "seed", "data_dir", "threads", "device", "checkpoint_every",
         "participation", "fail_prob"])
    config = config_from_args(args)
    assert (config.problem, config.method, config.rounds, config.clients, config.capacities,
            config.capacity_mode, config.capacity_trace, config.seed, config.data_dir,
            config.threads, config.device, config.checkpoint_every, config.participation,
            config.fail_prob) == ("quadratic", "fedmbo", 3, 4, [1.0, 0.5], "sampled", "t.csv",
                                  5, "d", 2, "cuda:1", 2, 0.5, 0.25)


def test_field_types_are_read_from_the_run_config_annotations():
    import dataclasses

    from rabo.config import FIELD_TYPES, RunConfig

    assert list(FIELD_TYPES) == [f.name for f in dataclasses.fields(RunConfig)
                                 if f.name not in ("problem_options", "policy_options")]
    assert (FIELD_TYPES["rounds"], FIELD_TYPES["outer_lr"], FIELD_TYPES["capacities"],
            FIELD_TYPES["batch_clients"], FIELD_TYPES["capacity_trace"]) == \
        (int, float, list, bool, str)     # int | None, float | None, list[float], bool | None
