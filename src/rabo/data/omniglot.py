"""Omniglot (Lake et al., 2015) for few-shot learning (docs/algorithm.md §7 `fewshot`, paper V-A).

Reads the official layouts, as directories or zips: ``images_background``,
``images_evaluation`` and the reduced ``images_background_small1`` / ``_small2``, each
``<root>/<Alphabet>/characterNN/<id>_<drawer>.png`` (105×105 1-bit PNGs, 20 drawings per
character). Images are resized to 28×28 with Pillow's LANCZOS filter (as in MAML's Omniglot
preprocessing) and inverted to white strokes on black. Each source is cached as one ``.npz``
(no pickle) in a cache directory outside the data directory.

Classes: character c rotated by k quarter turns (k = 0..3, counterclockwise) is class
``4c + k``, so rotations count as new classes (Santoro et al., 2016). Alphabets are split into
train and test; training characters are sharded over clients with all four rotations of a
character on one client.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, UnknownNameError
from .longtail import _check_int

SOURCES = ("images_background", "images_evaluation",
           "images_background_small1", "images_background_small2")
FULL_SOURCES = SOURCES[:2]
EXPECTED = ("images_background(.zip), images_evaluation(.zip) "
            "or images_background_small1/2(.zip)")
IMAGE_SIZE = 28
DRAWINGS = 20
"""Drawings per character: every Omniglot character was drawn by 20 people."""
ROTATIONS = 4
"""Quarter turns per character; class id = ROTATIONS · character + turns."""
SMALL_TRAIN = ("Balinese", "Early_Aramaic", "Greek", "Korean", "Latin")
SMALL_TEST = ("Japanese_(katakana)", "Sanskrit", "Tagalog")
"""The offline subset's fixed 5/3 alphabet split (the union of the two small zips)."""
CACHE_VERSION = 1
"""Part of the cache key: bump when the preprocessing changes."""

_DRAWER = re.compile(r"_(\d+)\.png$", re.IGNORECASE)


@dataclass
class OmniglotData:
    """Omniglot images in memory, ordered by character, then drawing (file name).

    ``images`` float32 (n, 28, 28) in [0, 1], white strokes on black; per image
    ``alphabet`` (index into ``alphabets``), ``character`` (index into ``characters``,
    named ``"<Alphabet>/<characterNN>"``) and ``drawer`` (0..19), all int64. ``drawings``
    (num_characters, 20) holds each character's image indices; ``alphabet_source`` names the
    source each alphabet was read from (the first, when several hold it).
    """

    images: np.ndarray
    alphabet: np.ndarray
    character: np.ndarray
    drawer: np.ndarray
    alphabets: tuple[str, ...]
    characters: tuple[str, ...]
    alphabet_source: tuple[str, ...]
    drawings: np.ndarray

    @property
    def num_characters(self) -> int:
        return len(self.characters)

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(s for s in SOURCES if s in self.alphabet_source)

    @property
    def character_alphabet(self) -> np.ndarray:
        """Alphabet index of each character, (num_characters,) int64."""
        return self.alphabet[self.drawings[:, 0]]


# --- reading one source ----------------------------------------------------------------------
def _find_sources(data_dir: Path) -> dict[str, Path]:
    """Each source present in ``data_dir`` (or its ``omniglot/``): the directory if extracted,
    else the zip."""
    for base in (data_dir, data_dir / "omniglot"):
        found = {}
        for name in SOURCES:
            if (base / name).is_dir():
                found[name] = base / name
            elif (base / f"{name}.zip").is_file():
                found[name] = base / f"{name}.zip"
        if found:
            return found
    return {}


def _source_key(path: Path) -> str:
    """Cache key: name, size and mtime (ns) of the zip, or of every file under the directory,
    plus the preprocessing version; hashed with SHA-256."""
    h = hashlib.sha256(f"v{CACHE_VERSION} {IMAGE_SIZE} lanczos {path.name}\n".encode())
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(path.parent).as_posix()} {st.st_size} {st.st_mtime_ns}\n"
                 .encode())
    return h.hexdigest()[:16]


def _hidden(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _layout(files: Iterable[str], dirs: Iterable[str],
            where: str) -> dict[tuple[str, str], list[str]]:
    """Map (alphabet, character) → sorted PNG names from relative POSIX paths, checking the
    ``<Alphabet>/<character>/<drawing>.png`` layout; other files are ignored."""
    layout: dict[tuple[str, str], list[str]] = {}
    alphabets: set[str] = set()
    for d in dirs:
        parts = d.strip("/").split("/")
        if _hidden(parts) or len(parts) > 2:
            continue
        alphabets.add(parts[0])
        if len(parts) == 2:
            layout.setdefault((parts[0], parts[1]), [])
    for f in files:
        parts = f.split("/")
        if _hidden(parts) or not f.lower().endswith(".png"):
            continue
        if len(parts) != 3:
            raise DataError(f"malformed Omniglot layout in '{where}': '{f}' is not "
                            "<Alphabet>/<characterNN>/<drawing>.png")
        alphabets.add(parts[0])
        layout.setdefault((parts[0], parts[1]), []).append(parts[2])
    if not layout:
        raise DataError(f"no Omniglot characters in '{where}': expected "
                        "<Alphabet>/<characterNN>/<drawing>.png")
    empty = sorted(alphabets - {a for a, _ in layout})
    if empty:
        raise DataError(f"malformed Omniglot layout in '{where}': alphabet '{empty[0]}' has no "
                        "character folders; expected <Alphabet>/<characterNN>/<drawing>.png")
    for (alphabet, char), names in sorted(layout.items()):
        if len(names) != DRAWINGS:
            raise DataError(f"malformed Omniglot layout in '{where}': '{alphabet}/{char}' has "
                            f"{len(names)} PNGs; expected {DRAWINGS} drawings per character")
        names.sort()
    return dict(sorted(layout.items()))


def _list_source(path: Path) -> tuple[dict[tuple[str, str], list[str]], Callable[[str], bytes],
                                      Callable[[], None]]:
    """(layout, read(relative path) → bytes, close) for a source directory or zip."""
    if path.is_dir():
        files, dirs = [], []
        for p in sorted(path.rglob("*")):
            (dirs if p.is_dir() else files).append(p.relative_to(path).as_posix())
        return _layout(files, dirs, str(path)), lambda rel: (path / rel).read_bytes(), lambda: None
    try:
        archive = zipfile.ZipFile(path)
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise DataError(f"cannot read Omniglot zip '{path}' ({type(e).__name__}: "
                        f"{' '.join(str(e).split())}); expected a zip of "
                        "<Alphabet>/<characterNN>/<drawing>.png") from None
    root = path.stem + "/"  # official zips hold one top folder named like the zip
    prefix = root if names and all(n.startswith(root) for n in names) else ""
    rel = [n[len(prefix):] for n in names if len(n) > len(prefix)]
    layout = _layout([n for n in rel if not n.endswith("/")],
                     [n for n in rel if n.endswith("/")], str(path))
    return layout, lambda r: archive.read(prefix + r), archive.close


def _decode(data: bytes) -> np.ndarray:
    """One PNG → uint8 (28, 28): resized with LANCZOS, inverted to white strokes on black."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        small = im.convert("L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    return 255 - np.asarray(small, dtype=np.uint8)


def _build_source(path: Path, quiet: bool) -> dict[str, np.ndarray]:
    """Read every drawing of one source: the arrays its cache file holds."""
    from PIL import Image, UnidentifiedImageError
    from tqdm import tqdm

    layout, read, close = _list_source(path)
    images = np.empty((len(layout) * DRAWINGS, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    files = []
    bar = tqdm(total=len(images), desc=f"omniglot {path.name}", unit="png",
               disable=quiet or not sys.stderr.isatty())
    try:
        i = 0
        for (alphabet, char), names in layout.items():
            for name in names:
                rel = f"{alphabet}/{char}/{name}"
                try:
                    images[i] = _decode(read(rel))
                except (UnidentifiedImageError, OSError, zipfile.BadZipFile, EOFError,
                        ValueError, Image.DecompressionBombError) as e:
                    raise DataError(f"cannot read Omniglot drawing '{rel}' in '{path}' "
                                    f"({type(e).__name__}); expected a PNG image") from None
                files.append(name)
                i += 1
                bar.update()
    finally:
        bar.close()
        close()
    return {"images": images,
            "characters": np.array([f"{a}/{c}" for a, c in layout]),
            "files": np.array(files).reshape(len(layout), DRAWINGS)}


def _sound_cache(arrays: dict[str, np.ndarray]) -> bool:
    """Whether a cache file's arrays have the shapes and types :func:`_build_source` gives."""
    images, characters, files = arrays["images"], arrays["characters"], arrays["files"]
    return (images.dtype == np.uint8 and images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE)
            and characters.ndim == 1 and characters.dtype.kind == "U"
            and files.shape == (len(characters), DRAWINGS) and files.dtype.kind == "U"
            and len(images) == files.size)


def _load_source(path: Path, cache_dir: Path, quiet: bool) -> dict[str, np.ndarray]:
    """One source's arrays from its cache file, building (and writing) it if absent or stale."""
    source = path.name.removesuffix(".zip")
    cache = cache_dir / f"omniglot-{source}-{_source_key(path)}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in ("images", "characters", "files")}
            if _sound_cache(arrays):
                return arrays
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, zlib.error):
            pass  # an unreadable or malformed cache is rebuilt
    arrays = _build_source(path, quiet)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{cache.stem}-", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, cache)
    except OSError as e:
        raise DataError(f"cannot write the Omniglot cache '{cache}' ({e.strerror}); "
                        "expected a writable cache directory") from None
    return arrays


# --- the public reader -----------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/rabo`` (``~/.cache/rabo`` when unset)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rabo"


def load_omniglot(data_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                  sources: Iterable[str] | None = None, quiet: bool = False) -> OmniglotData:
    """Read Omniglot from ``data_dir`` (or ``data_dir/omniglot``), cached in ``cache_dir``.

    ``sources`` defaults to the full ``images_background`` / ``images_evaluation`` when either
    is present, else the small subsets present. A character held by several sources (Greek
    and Latin are in both small zips) is kept once, after checking that its files and pixels
    are identical. A progress bar shows while a cache is built (not when quiet or not a tty).
    """
    data_dir = Path(data_dir).expanduser()
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if not data_dir.is_dir():
        raise DataError(f"no Omniglot data in '{data_dir}': the directory does not exist; "
                        f"expected {EXPECTED}")
    if cache_dir.resolve().is_relative_to(data_dir.resolve()):
        raise ConfigError(f"cache_dir '{cache_dir}' is inside the data directory "
                          f"'{data_dir}'; allowed: a directory outside it")
    found = _find_sources(data_dir)
    if not found:
        raise DataError(f"no Omniglot data in '{data_dir}': expected {EXPECTED}")
    arrays = {s: _load_source(found[s], cache_dir, quiet)
              for s in _wanted_sources(data_dir, found, sources)}
    return _merge_sources(arrays)


def _wanted_sources(data_dir: Path, found: dict[str, Path],
                    sources: Iterable[str] | str | None) -> list[str]:
    """The sources to read, in canonical order (which decides who owns an alphabet): the
    requested ones, each checked to exist, or by default the full ones present, else all."""
    if sources is None:
        wanted = [s for s in FULL_SOURCES if s in found] or list(found)
    else:
        wanted = [sources] if isinstance(sources, str) else list(sources)
        for s in wanted:
            if s not in SOURCES:
                raise UnknownNameError("Omniglot source", s, SOURCES)
            if s not in found:
                raise DataError(f"Omniglot source {s!r} not in '{data_dir}': expected "
                                f"{s}(.zip); present: {', '.join(found)}")
    return [s for s in SOURCES if s in wanted]


def _merge_sources(sources: dict[str, dict[str, np.ndarray]]) -> OmniglotData:
    """One data set from the sources' cached arrays: a character held by several sources is
    kept once (its first source's copy), after checking that the copies are identical."""
    blocks, names, files, owner = [], [], [], {}
    alphabets: dict[str, str] = {}  # alphabet → first source holding it
    for source, arrays in sources.items():
        for j, name in enumerate(arrays["characters"].tolist()):
            rows = arrays["images"][j * DRAWINGS:(j + 1) * DRAWINGS]
            if name in owner:
                k, first = owner[name]
                if files[k] != arrays["files"][j].tolist() or not np.array_equal(blocks[k], rows):
                    raise DataError(f"Omniglot character '{name}' differs between {first} and "
                                    f"{source}; expected identical copies")
                continue
            owner[name] = (len(names), source)
            alphabets.setdefault(name.split("/")[0], source)
            blocks.append(rows)
            names.append(name)
            files.append(arrays["files"][j].tolist())

    alphabet_index = {a: i for i, a in enumerate(alphabets)}
    num_chars = len(names)
    drawer = np.array([[int(m.group(1)) - 1 if (m := _DRAWER.search(f)) else d
                        for d, f in enumerate(fs)] for fs in files], dtype=np.int64)
    return OmniglotData(
        images=(np.concatenate(blocks).astype(np.float32) / 255.0),
        alphabet=np.repeat([alphabet_index[n.split("/")[0]] for n in names], DRAWINGS)
        .astype(np.int64),
        character=np.repeat(np.arange(num_chars, dtype=np.int64), DRAWINGS),
        drawer=drawer.reshape(-1),
        alphabets=tuple(alphabets),
        characters=tuple(names),
        alphabet_source=tuple(alphabets.values()),
        drawings=np.arange(num_chars * DRAWINGS, dtype=np.int64).reshape(num_chars, DRAWINGS),
    )


# --- classes, alphabet splits and client shards -----------------------------------------------
def class_ids(data: OmniglotData, alphabets: Iterable[str], rotations: bool = True) -> np.ndarray:
    """Sorted class ids (ROTATIONS · character + turns) of the given alphabets' characters."""
    wanted = {data.alphabets.index(a) for a in alphabets}
    chars = np.flatnonzero(np.isin(data.character_alphabet, list(wanted)))
    turns = np.arange(ROTATIONS if rotations else 1)
    return (chars[:, None] * ROTATIONS + turns).reshape(-1)


@dataclass(frozen=True)
class OmniglotSplit:
    """Disjoint train / test alphabets and their class ids."""

    train_alphabets: tuple[str, ...]
    test_alphabets: tuple[str, ...]
    train_classes: np.ndarray
    test_classes: np.ndarray


def _names(value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    return tuple(dict.fromkeys(s.strip() for s in items if s.strip()))


def split_alphabets(data: OmniglotData, train: str | Iterable[str] | None = None,
                    test: str | Iterable[str] | None = None,
                    rotations: bool = True, validate: bool = False) -> OmniglotSplit:
    """Split alphabets into train and test (names or a comma-separated string).

    Defaults: with the full data, background (30 alphabets) / evaluation (20); otherwise the
    offline subset's ``SMALL_TRAIN`` / ``SMALL_TEST``. Given one side only, the other is every
    remaining alphabet. With ``rotations`` each character gives 4 classes (0/90/180/270°).
    ``validate``: the split for tuning, which never sees a test alphabet: the last
    max(1, ⌊n/5⌋) of the n training alphabets are held out and take the test alphabets' place.
    """
    train_names, test_names = _names(train), _names(test)
    if train_names is None and test_names is None:
        if all(s in data.sources for s in FULL_SOURCES):
            train_names = tuple(a for a, s in zip(data.alphabets, data.alphabet_source, strict=True)
                                if s == "images_background")
            test_names = tuple(a for a in data.alphabets if a not in train_names)
        else:
            train_names, test_names = SMALL_TRAIN, SMALL_TEST
    for name in (train_names or ()) + (test_names or ()):
        if name not in data.alphabets:
            raise UnknownNameError("alphabet", name, data.alphabets)
    if train_names is None:
        train_names = tuple(a for a in data.alphabets if a not in test_names)
    if test_names is None:
        test_names = tuple(a for a in data.alphabets if a not in train_names)
    overlap = [a for a in train_names if a in test_names]
    if overlap:
        raise ConfigError(f"alphabet(s) {', '.join(overlap)} in both train and test; "
                          "allowed: disjoint alphabet lists")
    for side, names in (("train", train_names), ("test", test_names)):
        if not names:
            raise ConfigError(f"no {side} alphabets; allowed: at least one of "
                              f"{', '.join(data.alphabets)}")
    if validate:
        if len(train_names) < 2:
            raise ConfigError(f"validate needs at least 2 training alphabets to hold one out, "
                              f"got {', '.join(train_names)}")
        held = max(1, len(train_names) // 5)
        train_names, test_names = train_names[:-held], train_names[-held:]
    return OmniglotSplit(train_names, test_names, class_ids(data, train_names, rotations),
                         class_ids(data, test_names, rotations))


def shard_classes(classes: np.ndarray, num_clients: int, ways: int,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """Shard classes over clients by character (non-IID): a seeded shuffle of the characters
    split into ``num_clients`` near-equal blocks; all rotations of a character go to one
    client. Each client needs at least ``ways`` classes (N) for an N-way task."""
    _check_int("clients", num_clients, 1)
    classes = np.asarray(classes, dtype=np.int64)
    chars = rng.permutation(np.unique(classes // ROTATIONS))
    shards = []
    for client, block in enumerate(np.array_split(chars, num_clients)):
        shard = classes[np.isin(classes // ROTATIONS, block)]
        if len(shard) < ways:
            raise ConfigError(f"client {client} has {len(shard)} classes, fewer than ways "
                              f"N={ways} ({len(chars)} characters over {num_clients} clients); "
                              "allowed: fewer clients or ways")
        shards.append(shard)
    return shards
