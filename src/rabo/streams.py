"""The registry of a run's random streams: every seeded draw and the key it is drawn
from.

Each stream is NumPy's generator over a key of ids (seed, round, client) closed by a
tag of its own, never global state: a draw is a pure function of its ids, so a resumed
run or a Flower node draws exactly what the simulator draws, and distinct tags keep the
streams independent. The values are part of every fixed-seed result: changing one
changes every run that draws from it.

Drawn from ``[seed, round, tag]`` once per round:

- :data:`PARTICIPANTS`: :func:`rabo.server.participants`, the ⌈p·M⌉ clients and who
  fails.
- :data:`MASKS`: :func:`rabo.server.round_masks`, the mask policy's random choices.
- :data:`CAPACITIES`: :meth:`rabo.capacity.CapacitySchedule.at` in mode "sampled",
  r_i^t.

Drawn from ``[seed, round, client, phase]`` (:func:`client_rng`): a client's
minibatches or tasks of one phase, ``PHASES["inner"]`` for the K inner steps,
``PHASES["outer"]`` for the T outer steps.

Drawn from ``[seed, tag]`` once, when a problem is built:

- :data:`QUADRATIC`: :class:`rabo.problems.Quadratic`, c̄ and the clients' ε.
- :data:`FEWSHOT_SHARDS`: :class:`rabo.problems.FewShot` on Omniglot, each client's
  characters.
- :data:`FEWSHOT_TEST`: ``FewShot.test_tasks``, the test episodes (the same at every
  evaluation).

Seeded elsewhere, by the run's seed alone: the initial parameters
(:func:`rabo.models.fresh_params`, ``torch.manual_seed``) and the long-tailed splits
(:func:`rabo.data.longtail.federated_longtail`). User problems (examples/) pick their
own keys.
"""

from __future__ import annotations

import numpy as np

PARTICIPANTS = 0xFA1
MASKS = 0x5E7
CAPACITIES = 0xCA9
QUADRATIC = 0x9AD
FEWSHOT_SHARDS = 0x0A1
FEWSHOT_TEST = 0xE7A1
PHASES = {"inner": 1, "outer": 2}


def rng(*key: int) -> np.random.Generator:
    """The generator of the stream ``key`` (ids, then the stream's tag)."""
    return np.random.default_rng(list(key))


def client_rng(seed: int, round: int, client: int, phase: str) -> np.random.Generator:
    """The client's data sampler for one phase of one round: a pure function of its
    ids, so a resumed run or a Flower node draws the same minibatches as the
    simulator."""
    return rng(seed, round, client, PHASES[phase])
