"""Omniglot reader, alphabet splits, client shards and episodes (docs/algorithm.md §7
`fewshot`), on the offline subset (the two official small zips in ../shared/data/omniglot) and
tiny zips the tests write themselves."""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from rabo.data import omniglot
from rabo.data.episodes import sample_task
from rabo.data.omniglot import (
    DRAWINGS,
    ROTATIONS,
    SMALL_TEST,
    SMALL_TRAIN,
    load_omniglot,
    shard_classes,
    split_alphabets,
)
from rabo.errors import ConfigError, DataError, UnknownNameError

OMNIGLOT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
# README of the data: small1 + small2, Greek and Latin in both.
ALPHABET_CHARACTERS = {"Balinese": 24, "Early_Aramaic": 22, "Greek": 24, "Korean": 40,
                       "Latin": 26, "Japanese_(katakana)": 47, "Sanskrit": 42, "Tagalog": 17}

needs_data = pytest.mark.skipif(not OMNIGLOT_DIR.is_dir(), reason=f"no {OMNIGLOT_DIR}")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("omniglot-cache")


@pytest.fixture(scope="module")
def data(cache_dir):
    if not OMNIGLOT_DIR.is_dir():
        pytest.skip(f"no {OMNIGLOT_DIR}")
    return load_omniglot(OMNIGLOT_DIR, cache_dir, quiet=True)


@pytest.fixture(scope="module")
def split(data):
    return split_alphabets(data)


# --- tiny fake data written by the tests ------------------------------------------------------
def png(seed: int) -> bytes:
    """A 105×105 1-bit drawing like Omniglot's: one black stroke on white."""
    rng = np.random.default_rng(seed)
    im = Image.new("1", (105, 105), 1)
    ImageDraw.Draw(im).line([tuple(p) for p in rng.integers(10, 95, (4, 2)).tolist()],
                            fill=0, width=3)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def fake_members(alphabet="Fake", characters=2, drawings=DRAWINGS, seed=0) -> dict[str, bytes]:
    """``{<Alphabet>/characterNN/<id>_<drawer>.png: bytes}`` for a fake alphabet."""
    return {f"{alphabet}/character{c + 1:02d}/{900 + c:04d}_{d + 1:02d}.png":
            png(seed + 100 * c + d) for c in range(characters) for d in range(drawings)}


def write_zip(path: Path, members: dict[str, bytes], dirs=()) -> Path:
    root = path.stem
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for d in dirs:
            z.writestr(f"{root}/{d}/", b"")
        for name, blob in members.items():
            z.writestr(f"{root}/{name}", blob)
    return path


def write_dir(path: Path, members: dict[str, bytes]) -> Path:
    for name, blob in members.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(blob)
    return path


def one_line_data_error(call, *needles: str) -> str:
    with pytest.raises(DataError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message
    return message


# --- the offline subset -----------------------------------------------------------------------
@needs_data
def test_union_of_small_zips_has_242_characters_and_4840_images(data):
    assert data.num_characters == 242
    assert data.images.shape == (4840, 28, 28)
    assert data.sources == ("images_background_small1", "images_background_small2")
    counts = dict(zip(data.alphabets, np.bincount(data.character_alphabet), strict=True))
    assert counts == ALPHABET_CHARACTERS  # Greek and Latin once, not twice
    assert data.alphabet_source[data.alphabets.index("Greek")] == "images_background_small1"
    assert data.drawings.shape == (242, DRAWINGS)
    assert (data.character[data.drawings] == np.arange(242)[:, None]).all()
    assert (np.sort(data.drawer[data.drawings], axis=1) == np.arange(DRAWINGS)).all()
    assert len(set(data.characters)) == 242
    assert (data.alphabet == data.character_alphabet[data.character]).all()


@needs_data
def test_images_are_28x28_float32_white_strokes_on_black(data):
    images = data.images
    assert images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0
    assert 0.03 < images.mean() < 0.2  # mostly black background: strokes are white
    border = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]])
    assert border.mean() < 0.01


@needs_data
def test_offline_split_has_544_train_and_424_test_classes_with_rotations(split, data):
    assert split.train_alphabets == SMALL_TRAIN and split.test_alphabets == SMALL_TEST
    assert len(split.train_classes) == 544 == 136 * ROTATIONS
    assert len(split.test_classes) == 424 == 106 * ROTATIONS
    assert not set(split.train_classes) & set(split.test_classes)
    train_chars = np.unique(split.train_classes // ROTATIONS)
    assert {data.alphabets[a] for a in data.character_alphabet[train_chars]} == set(SMALL_TRAIN)
    no_rotations = split_alphabets(data, rotations=False)
    assert (len(no_rotations.train_classes), len(no_rotations.test_classes)) == (136, 106)


@needs_data
def test_split_by_alphabet_names(data):
    split = split_alphabets(data, train="Greek, Latin", test=["Tagalog"])
    assert len(split.train_classes) == (24 + 26) * 4 and len(split.test_classes) == 17 * 4
    rest = split_alphabets(data, test=["Tagalog", "Sanskrit"])  # train: every other alphabet
    assert len(rest.train_classes) == (242 - 17 - 42) * 4


@needs_data
def test_validation_split_holds_out_the_last_fifth_of_the_training_alphabets(data):
    split = split_alphabets(data, validate=True)
    assert split.train_alphabets == SMALL_TRAIN[:4] and split.test_alphabets == ("Latin",)
    assert len(split.train_classes) == (24 + 22 + 24 + 40) * 4
    assert len(split.test_classes) == 26 * 4
    assert not set(split.test_alphabets) & set(SMALL_TEST)  # never a test alphabet
    with pytest.raises(ConfigError, match="validate needs at least 2 training alphabets"):
        split_alphabets(data, train=["Greek"], validate=True)


@needs_data
def test_fewshot_validate_trains_and_evaluates_inside_the_training_alphabets(cache_dir):
    from rabo.problems import FewShot

    problem = FewShot(clients=4, data_dir=str(OMNIGLOT_DIR), validate=True,
                      cache_dir=str(cache_dir))
    episodes = problem.episodes
    assert episodes.split.test_alphabets == ("Latin",)
    assert np.array_equal(np.sort(np.concatenate(episodes.shards)), episodes.split.train_classes)
    config = problem.config()  # the split is resolved: a rebuild from it holds out nothing more
    assert (config["test_alphabets"], config["validate"]) == ("Latin", False)
    assert problem.opts["validate"] is True  # the constructor does not rewrite its options
    again = FewShot(clients=4, data_dir=str(OMNIGLOT_DIR), cache_dir=str(cache_dir),
                    **{k: config[k] for k in ("train_alphabets", "test_alphabets", "validate")})
    assert again.episodes.split.train_alphabets == problem.episodes.split.train_alphabets


@needs_data
def test_unknown_alphabet_lists_the_available_ones(data):
    with pytest.raises(UnknownNameError, match=r"unknown alphabet 'Klingon'; allowed: .*Tagalog"):
        split_alphabets(data, train=["Greek", "Klingon"])
    with pytest.raises(ConfigError, match=r"alphabet\(s\) Greek in both train and test"):
        split_alphabets(data, train=["Greek", "Latin"], test=["Greek"])


@needs_data
def test_client_shards_are_disjoint_complete_and_keep_rotations_together(split):
    shards = shard_classes(split.train_classes, 10, 5, np.random.default_rng(0))
    assert len(shards) == 10
    every = np.concatenate(shards)
    assert np.array_equal(np.sort(every), np.sort(split.train_classes))  # complete, disjoint
    chars = [set((s // ROTATIONS).tolist()) for s in shards]
    assert sum(len(c) for c in chars) == 136 and len(set().union(*chars)) == 136
    for shard in shards:
        assert len(shard) == ROTATIONS * len(set((shard // ROTATIONS).tolist()))
    assert sorted(len(s) for s in shards) == [52] * 4 + [56] * 6  # 136 characters: 13-14 each
    again = shard_classes(split.train_classes, 10, 5, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(shards, again, strict=True))
    other = shard_classes(split.train_classes, 10, 5, np.random.default_rng(1))
    assert not all(np.array_equal(a, b) for a, b in zip(shards, other, strict=True))


@needs_data
def test_client_with_fewer_classes_than_ways_is_a_config_error(split):
    # 136 characters over 40 clients: 3 or 4 characters, 12 or 16 classes each
    with pytest.raises(ConfigError, match=r"client 0 has 16 classes, fewer than ways N=20"):
        shard_classes(split.train_classes, 40, 20, np.random.default_rng(0))


def _locate(data, class_pool):
    """Every rotated drawing of the pool's classes by its bytes → (image index, quarter turns)."""
    where = {}
    for c in class_pool:
        char, turns = divmod(int(c), ROTATIONS)
        for i in data.drawings[char]:
            where[np.rot90(data.images[i], turns).tobytes()] = (int(i), turns)
    return where


@needs_data
@pytest.mark.parametrize("ways,shots", [(5, 1), (20, 5)])
def test_episode_has_n_classes_k_support_and_20_minus_k_query_drawings(data, split, ways, shots):
    task = sample_task(data, split.test_classes, ways, shots, None, np.random.default_rng(3))
    queries = DRAWINGS - shots
    assert task["support"].shape == (ways * shots, 1, 28, 28)
    assert task["query"].shape == (ways * queries, 1, 28, 28)
    assert task["support"].dtype == task["query"].dtype == torch.float32
    assert task["support_labels"].tolist() == np.repeat(np.arange(ways), shots).tolist()
    assert task["query_labels"].tolist() == np.repeat(np.arange(ways), queries).tolist()
    where = _locate(data, split.test_classes)
    found = {}
    for part in ("support", "query"):
        for image, label in zip(task[part][:, 0].numpy(), task[f"{part}_labels"].tolist(),
                                strict=True):
            index, turns = where[image.tobytes()]  # a rotated drawing of a pool class
            found.setdefault(label, []).append((part, index, turns))
    classes = set()
    for label, drawn in found.items():
        indices = [i for _, i, _ in drawn]
        assert len(set(indices)) == DRAWINGS  # support and query disjoint, all 20 drawings
        assert len({int(data.character[i]) for i in indices}) == 1  # one character per label
        assert len({t for _, _, t in drawn}) == 1  # one rotation per label
        classes.add(int(data.character[indices[0]]) * ROTATIONS + drawn[0][2])
    assert len(classes) == ways  # N distinct classes


@needs_data
def test_same_seed_gives_the_same_task(data, split):
    a, b, c = (sample_task(data, split.train_classes, 5, 1, None, np.random.default_rng(s))
               for s in (7, 7, 8))
    assert all(a[k].equal(b[k]) for k in a)
    assert not a["support"].equal(c["support"])
    fewer = sample_task(data, split.train_classes, 5, 1, 3, np.random.default_rng(7))
    assert fewer["query"].shape == (15, 1, 28, 28)


@needs_data
@pytest.mark.parametrize("shots", [0, 20])
def test_shots_outside_1_to_19_is_a_config_error(data, split, shots):
    with pytest.raises(ConfigError, match=rf"shots={shots} is not allowed; allowed: .* 1\.\.19"):
        sample_task(data, split.train_classes, 5, shots, None, np.random.default_rng(0))
    with pytest.raises(ConfigError, match=r"ways=9 is not allowed; allowed: .* 1\.\.8"):
        sample_task(data, split.train_classes[:8], 9, 1, None, np.random.default_rng(0))


@needs_data
def test_second_load_reads_the_cache_not_the_pngs(data, cache_dir, monkeypatch):
    def no_png(_):
        raise AssertionError("a PNG was decoded although the cache is fresh")

    monkeypatch.setattr(omniglot, "_decode", no_png)
    again = load_omniglot(OMNIGLOT_DIR, cache_dir, quiet=True)
    assert np.array_equal(again.images, data.images) and again.characters == data.characters
    assert len(list(cache_dir.glob("*.npz"))) == 2  # one file per source


# --- the fake alphabet: layouts, cache key, bad inputs ----------------------------------------
def test_cache_rebuilds_when_the_source_zip_changes(tmp_path, monkeypatch):
    data_dir, cache = tmp_path / "data", tmp_path / "cache"
    data_dir.mkdir()
    source = write_zip(data_dir / "images_evaluation.zip", fake_members(characters=2))
    first = load_omniglot(data_dir, cache, quiet=True)
    assert first.characters == ("Fake/character01", "Fake/character02")
    assert first.images.shape == (40, 28, 28) and first.images.mean() < 0.2
    assert first.alphabet_source == ("images_evaluation",)

    decoded = []
    real = omniglot._decode
    monkeypatch.setattr(omniglot, "_decode", lambda b: decoded.append(1) or real(b))
    load_omniglot(data_dir, cache, quiet=True)
    assert decoded == []  # reused

    write_zip(source, fake_members(characters=3, seed=5))
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    second = load_omniglot(data_dir, cache, quiet=True)
    assert len(decoded) == 60 and second.num_characters == 3  # rebuilt from the new zip
    assert len(list(cache.glob("*.npz"))) == 2


def test_directory_layout_reads_like_the_zip(tmp_path):
    members = fake_members(characters=2)
    write_zip(tmp_path / "z" / "images_background_small1.zip", members)
    write_dir(tmp_path / "d" / "omniglot" / "images_background_small1", members)  # <dir>/omniglot
    from_zip = load_omniglot(tmp_path / "z", tmp_path / "c1", quiet=True)
    from_dir = load_omniglot(tmp_path / "d", tmp_path / "c2", quiet=True)
    assert from_zip.characters == from_dir.characters
    assert np.array_equal(from_zip.images, from_dir.images)


def test_character_in_two_sources_must_be_identical(tmp_path):
    write_zip(tmp_path / "d" / "images_background_small1.zip", fake_members(seed=0))
    write_zip(tmp_path / "d" / "images_background_small2.zip", fake_members(seed=1))
    one_line_data_error(lambda: load_omniglot(tmp_path / "d", tmp_path / "c", quiet=True),
                        "Fake/character01", "differs between images_background_small1 and "
                        "images_background_small2")


def test_missing_or_empty_data_dir_is_a_data_error(tmp_path):
    one_line_data_error(lambda: load_omniglot(tmp_path / "nope", tmp_path / "c"),
                        "no Omniglot data in", "does not exist", "images_background(.zip)")
    (tmp_path / "empty").mkdir()
    one_line_data_error(lambda: load_omniglot(tmp_path / "empty", tmp_path / "c"),
                        f"no Omniglot data in '{tmp_path / 'empty'}': expected "
                        "images_background(.zip), images_evaluation(.zip) or "
                        "images_background_small1/2(.zip)")


def test_corrupt_zip_is_a_data_error(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "images_background.zip").write_bytes(np.random.default_rng(0).bytes(4096))
    one_line_data_error(lambda: load_omniglot(tmp_path / "d", tmp_path / "c"),
                        "cannot read Omniglot zip", "images_background.zip")


def _claiming(data: bytes, width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``×``height`` pixels (its IHDR rewritten, CRC fixed)."""
    ihdr = bytearray(data[12:29])                       # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    return data[:12] + bytes(ihdr) + zlib.crc32(ihdr).to_bytes(4, "big") + data[33:]


def test_a_decompression_bomb_png_is_a_data_error(tmp_path):
    """A 20000×20000 PNG raised Pillow's DecompressionBombError, uncaught."""
    members = fake_members(characters=1)
    members["Fake/character01/0900_01.png"] = _claiming(png(0), 20000, 20000)
    write_zip(tmp_path / "d" / "images_evaluation.zip", members)
    one_line_data_error(lambda: load_omniglot(tmp_path / "d", tmp_path / "c", quiet=True),
                        "cannot read Omniglot drawing 'Fake/character01/0900_01.png'")


@pytest.mark.parametrize("damage", ["flipped-bytes", "wrong-shapes"])
def test_a_corrupted_cache_file_is_rebuilt(damage, tmp_path):
    write_zip(tmp_path / "d" / "images_evaluation.zip", fake_members(characters=2))
    first = load_omniglot(tmp_path / "d", tmp_path / "c", quiet=True)
    (cache,) = (tmp_path / "c").glob("*.npz")
    if damage == "flipped-bytes":
        data = bytearray(cache.read_bytes())
        for at in range(60, len(data) - 200, 97):
            data[at] ^= 0xFF
        cache.write_bytes(bytes(data))
    else:
        np.savez(cache, images=np.zeros((3, 5), np.uint8), characters=np.array(["x"]),
                 files=np.array([["y"]]))
    again = load_omniglot(tmp_path / "d", tmp_path / "c", quiet=True)
    assert np.array_equal(again.images, first.images) and again.characters == first.characters


def test_character_folder_without_pngs_is_a_data_error(tmp_path):
    write_dir(tmp_path / "d" / "images_evaluation", fake_members(characters=1))
    (tmp_path / "d" / "images_evaluation" / "Fake" / "character02").mkdir()
    one_line_data_error(lambda: load_omniglot(tmp_path / "d", tmp_path / "c"),
                        "'Fake/character02' has 0 PNGs; expected 20 drawings per character")
    write_zip(tmp_path / "z" / "images_evaluation.zip", fake_members(characters=1),
              dirs=["Fake/character02"])
    one_line_data_error(lambda: load_omniglot(tmp_path / "z", tmp_path / "c"),
                        "'Fake/character02' has 0 PNGs")


def test_png_outside_a_character_folder_is_a_data_error(tmp_path):
    write_zip(tmp_path / "d" / "images_evaluation.zip", {**fake_members(characters=1),
                                                          "Fake/stray.png": png(0)})
    one_line_data_error(lambda: load_omniglot(tmp_path / "d", tmp_path / "c"),
                        "'Fake/stray.png' is not <Alphabet>/<characterNN>/<drawing>.png")


def test_bad_sources_and_cache_inside_data_dir(tmp_path):
    write_zip(tmp_path / "images_evaluation.zip", fake_members(characters=1))
    with pytest.raises(UnknownNameError, match="unknown Omniglot source 'images_test'"):
        load_omniglot(tmp_path, tmp_path.parent / "c", sources=["images_test"])
    one_line_data_error(lambda: load_omniglot(tmp_path, tmp_path.parent / "c",
                                              sources=["images_background"]),
                        "'images_background' not in", "present: images_evaluation")
    with pytest.raises(ConfigError, match="inside the data directory"):
        load_omniglot(tmp_path, tmp_path / "cache")


def test_full_data_defaults_to_the_background_evaluation_split(tmp_path):
    d = tmp_path / "d"
    write_zip(d / "images_background.zip", fake_members("Alpha", characters=3))
    write_zip(d / "images_evaluation.zip", fake_members("Beta", characters=2, seed=7))
    write_zip(d / "images_background_small1.zip", fake_members("Gamma", characters=1))
    data = load_omniglot(d, tmp_path / "c", quiet=True)  # the small zip is not read
    assert data.sources == ("images_background", "images_evaluation")
    split = split_alphabets(data)
    assert (split.train_alphabets, split.test_alphabets) == (("Alpha",), ("Beta",))
    assert (len(split.train_classes), len(split.test_classes)) == (3 * 4, 2 * 4)


@needs_data
@pytest.mark.slow
def test_batched_evaluation_gives_the_loops_accuracies_on_real_episodes():
    """Issue 24 on 20 Omniglot test episodes (binary images: tied pooling windows, flat batch
    statistics): the batched evaluation's per-episode accuracies and query logits are the
    per-episode loop's."""
    from rabo.bench.runner import measure_eval

    row = measure_eval(data_dir=str(OMNIGLOT_DIR), episodes=20)
    assert row["source"] == "omniglot" and row["same_accuracy"] is True
    assert row["max_accuracy_diff"] <= 1e-6 and row["max_logit_diff"] <= 1e-5
    assert 0.2 < row["accuracy"] < 1  # a random Conv-4 is better than chance (1/5) already
