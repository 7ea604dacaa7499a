"""Problems by name (docs/algorithm.md §7): a built-in one, or a user's
:class:`~rabo.BilevelProblem` subclass by reference, ``path/to/file.py:Class`` or
``package.module:Class``."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from ..errors import ConfigError, UnknownNameError
from ..problem import BilevelProblem
from .fewshot import FewShot
from .losstuning import LossTuning
from .quadratic import Quadratic

PROBLEMS: dict[str, type[BilevelProblem]] = {"quadratic": Quadratic, "losstuning": LossTuning,
                                              "fewshot": FewShot}
REFERENCES = ("FILE.py:Class", "module:Class")


def get_problem(name: str) -> type[BilevelProblem]:
    """The problem class ``name`` names: a built-in (:data:`PROBLEMS`), ``module:Class``
    (imported, e.g. from an installed package) or ``file.py:Class`` (the file loaded as a
    module of its own, once per process). Every runtime (``rabo run``, ``rabo cost``, the Flower
    apps) finds its problem here; anything else is a one-line ConfigError naming the reference."""
    if name in PROBLEMS:
        return PROBLEMS[name]
    where, sep, attr = str(name).rpartition(":")
    if not sep or not where or not attr:
        raise UnknownNameError("problem", name, [*PROBLEMS, *REFERENCES])
    module = _load_file(name, Path(where)) if _is_file(where) else _import(name, where)
    found = getattr(module, attr, None)
    if found is None:
        raise ConfigError(f"problem {name!r}: {where!r} has no attribute {attr!r}")
    if not (isinstance(found, type) and issubclass(found, BilevelProblem)):
        what = "is not a subclass of rabo.BilevelProblem" if isinstance(found, type) else \
            f"is a {type(found).__name__}, not a class"
        raise ConfigError(f"problem {name!r}: {attr} {what}; expected a class declared as "
                          f"`class {attr}(rabo.BilevelProblem)` and built as "
                          f"{attr}(clients, seed, data_dir, **options)")
    return found


def reference(name: str) -> str:
    """``name`` as stored in config.json: a file reference with its path made absolute (so
    that ``--resume`` from another directory and the Flower apps, which run elsewhere, load
    the same file); built-in names and module references unchanged."""
    where, sep, attr = str(name).rpartition(":")
    if name in PROBLEMS or not sep or not _is_file(where):
        return name
    return f"{Path(where).resolve()}:{attr}"


def _is_file(where: str) -> bool:
    """Whether the part before ":" is a file path rather than a dotted module name."""
    return where.endswith(".py") or "/" in where or "\\" in where


def _import(name: str, module: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"problem {name!r}: cannot import module {module!r} "
                          f"({type(err).__name__}: {err})") from None


def _load_file(name: str, path: Path):
    """Execute ``path`` as a module named after its absolute path, registered in sys.modules
    so that a second lookup (another build in this process) reuses it."""
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"problem {name!r}: file {str(path)!r} does not exist")
    module_name = "rabo_user_problem_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"problem {name!r}: {str(path)!r} is not a Python file (*.py)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (ImportError, SyntaxError) as err:
        del sys.modules[module_name]
        raise ConfigError(f"problem {name!r}: cannot load {str(path)!r} "
                          f"({type(err).__name__}: {str(err).splitlines()[0]})") from None
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
