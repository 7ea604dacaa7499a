"""Where the few-shot problem's episodes come from (docs/algorithm.md §7 `fewshot`): Omniglot
(alphabets split into train and test, rotations as new classes, training characters sharded
over the clients) or synthetic images of the right shapes (cost accounting; no accuracy).
:func:`episode_source` builds one from the problem's options, once."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .. import streams
from ..data import load_omniglot, sample_task, shard_classes, split_alphabets
from ..data.omniglot import DRAWINGS, OmniglotData, OmniglotSplit
from ..errors import ConfigError, DataError

Episode = dict[str, Tensor]


def synthetic_task(rng: np.random.Generator, ways: int, shots: int, queries: int,
                   image_size: int) -> Episode:
    """An N-way K-shot task of Gaussian images: shapes and cost of a real episode."""
    def images(n: int) -> Tensor:
        return torch.as_tensor(rng.standard_normal((n, 1, image_size, image_size)),
                               dtype=torch.float32)
    return {"support": images(ways * shots),
            "support_labels": torch.arange(ways).repeat_interleave(shots),
            "query": images(ways * queries),
            "query_labels": torch.arange(ways).repeat_interleave(queries)}


@dataclass(frozen=True)
class OmniglotEpisodes:
    """Omniglot episodes: a client's from its shard of the training characters, the test
    episodes from the test alphabets (held-out training alphabets under ``validate``)."""

    data: OmniglotData
    split: OmniglotSplit
    shards: list[np.ndarray]
    ways: int
    shots: int
    scored: ClassVar[bool] = True

    def train_task(self, client: int, rng: np.random.Generator) -> Episode:
        return sample_task(self.data, self.shards[client], self.ways, self.shots, None, rng)

    def test_task(self, rng: np.random.Generator) -> Episode:
        return sample_task(self.data, self.split.test_classes, self.ways, self.shots, None, rng)

    def resolved(self) -> dict[str, Any]:
        """The options that rebuild this split: the alphabet lists, ``validate`` resolved into
        them (a rebuild holds out nothing more)."""
        return {"train_alphabets": ",".join(self.split.train_alphabets),
                "test_alphabets": ",".join(self.split.test_alphabets), "validate": False}


@dataclass(frozen=True)
class SyntheticEpisodes:
    """Gaussian-image episodes of the right shapes, for every client and for the test; not
    scored (no accuracy)."""

    ways: int
    shots: int
    image_size: int
    scored: ClassVar[bool] = False

    def train_task(self, client: int, rng: np.random.Generator) -> Episode:
        return self.test_task(rng)

    def test_task(self, rng: np.random.Generator) -> Episode:
        return synthetic_task(rng, self.ways, self.shots, DRAWINGS - self.shots,
                              self.image_size)

    def resolved(self) -> dict[str, Any]:
        return {}


def omniglot_episodes(opts: Mapping[str, Any], clients: int, seed: int,
                      data_dir: str | None) -> OmniglotEpisodes:
    """Omniglot read from ``data_dir``, its alphabets split and the training characters
    sharded over the ``clients``."""
    if int(opts["image_size"]) != 28:
        raise ConfigError(f"image_size={opts['image_size']!r}: Omniglot episodes are 28×28")
    if not data_dir:
        raise DataError("fewshot on Omniglot needs --data-dir: a directory with "
                        "images_background(.zip)/images_evaluation(.zip) or "
                        "images_background_small1/2(.zip)")
    data = load_omniglot(data_dir, opts["cache_dir"] or None, quiet=True)
    split = split_alphabets(data, opts["train_alphabets"] or None,
                            opts["test_alphabets"] or None, validate=bool(opts["validate"]))
    shards = shard_classes(split.train_classes, clients, int(opts["ways"]),
                           streams.rng(seed, streams.FEWSHOT_SHARDS))
    return OmniglotEpisodes(data, split, shards, int(opts["ways"]), int(opts["shots"]))


def synthetic_episodes(opts: Mapping[str, Any], clients: int, seed: int,
                       data_dir: str | None) -> SyntheticEpisodes:
    """Synthetic episodes of the options' shapes (no data read)."""
    return SyntheticEpisodes(int(opts["ways"]), int(opts["shots"]), int(opts["image_size"]))


EpisodeSource = Callable[[Mapping[str, Any], int, int, str | None],
                         OmniglotEpisodes | SyntheticEpisodes]
SOURCES: dict[str, EpisodeSource] = {"omniglot": omniglot_episodes,
                                     "synthetic": synthetic_episodes}


def episode_source(opts: Mapping[str, Any], clients: int, seed: int,
                   data_dir: str | None) -> OmniglotEpisodes | SyntheticEpisodes:
    """The episode source ``opts["source"]`` names (already checked to be in
    :data:`SOURCES`), built once for the problem."""
    return SOURCES[opts["source"]](opts, clients, seed, data_dir)
