"""What a page names that does not exist: file paths, modules, ``python -m`` commands, ``make`` targets,
``papo.*`` options and verl's Hydra keys, in prose and in code blocks alike.

Test support for ``tests/docs/test_doc_names.py``. :func:`missing_names` takes a page's text and
returns one line per name that does not resolve, so drift (a renamed module, a removed option, a moved
file) fails a test instead of misleading a reader.

What counts as a name (each pattern also requires that no ``word``, ``/``, ``.``, ``:`` or ``-`` precedes it,
so ``.data_prep/...`` output folders and other projects' ``examples/configs/...`` are not ours):

* paths under the project's top-level folders (``recipe/``, ``papo_tools/``, ``data_prep/``,
  ``benchmarks/``, ``tests/``, ``scripts/``, ``configs/``); ``*`` and ``<placeholder>`` match any text;
* dotted names under ``recipe``, ``papo_tools``, ``data_prep`` and ``verl``: a module, or a module then
  attributes (``recipe.papo.masking.mask_image_patches``);
* ``python -m <module>`` and ``make <target>``;
* ``papo.<option>`` (a ``PapoConfig`` field; ``papo.vppo_*`` matches by prefix);
* keys of verl's trainer config (``actor_rollout_ref.``, ``algorithm.``, ``trainer.``, ``data.``,
  ``reward.``, ``critic.``, ``ray_kwargs.``) as ``configs/papo_trainer.yaml`` composes them. A key
  written with ``+``/``++`` adds to the config and is checked up to its existing parent, as Hydra does.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import importlib.util
import re
from functools import cache
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[2]
TOP_FOLDERS = ("recipe", "papo_tools", "data_prep", "benchmarks", "tests", "scripts", "configs", "docs")
PACKAGES = ("recipe", "papo_tools", "data_prep", "verl")
CONFIG_ROOTS = ("actor_rollout_ref", "algorithm", "trainer", "data", "reward", "critic", "ray_kwargs")
NOT_PRECEDED = r"(?<![\w/.:\-])"
_MISSING = object()  # OmegaConf.select's default: tells a missing key from a null value
FILE_SUFFIXES = (".py", ".md", ".sh", ".yaml", ".json", ".jsonl", ".txt", ".parquet", ".png", ".pt")

PATH = re.compile(NOT_PRECEDED + r"((?:" + "|".join(TOP_FOLDERS) + r")/[\w./*<>\-]*[\w*>])")
DOTTED = re.compile(NOT_PRECEDED + r"((?:" + "|".join(PACKAGES) + r")(?:\.[A-Za-z_]\w*)+)")
PYTHON_M = re.compile(r"\bpython3? -m ([\w.]+)")
MAKE = re.compile(r"(?:^|`|&& |; )make ([a-z][\w-]*)", flags=re.MULTILINE)
OPTION = re.compile(NOT_PRECEDED + r"(papo\.[a-z_][\w]*\*?)")
CONFIG_KEY = re.compile(r"(?<![\w/.\-])(\+{0,2}(?:" + "|".join(CONFIG_ROOTS) + r")(?:\.[A-Za-z_]\w*)+)")


def path_exists(name: str) -> bool:
    """``name`` (relative to the repository root; ``*`` and ``<...>`` as wildcards) matches a file or folder."""
    pattern = re.sub(r"<[^>]*>", "*", name.rstrip("."))
    if "*" not in pattern:
        return (ROOT / pattern).exists()
    return next(ROOT.glob(pattern), None) is not None


def _find_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@cache
def dotted_exists(name: str) -> bool:
    """``name`` is a module, or a module followed by attributes that exist on it."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        module_name = ".".join(parts[:end])
        if not _find_module(module_name):
            continue
        if end == len(parts):
            return True
        target = importlib.import_module(module_name)
        for attribute in parts[end:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


@cache
def make_targets() -> frozenset[str]:
    """The targets the Makefile defines."""
    text = (ROOT / "Makefile").read_text()
    return frozenset(re.findall(r"^([a-z][\w-]*):", text, flags=re.MULTILINE))


@cache
def option_names() -> tuple[str, ...]:
    from recipe.papo.config import PapoConfig

    return tuple(f.name for f in dataclasses.fields(PapoConfig) if not f.name.startswith("_"))


def option_exists(name: str) -> bool:
    """``papo.<field>`` of ``PapoConfig`` (or one of its read-only properties, e.g. ``papo.enabled`` in the
    dry run's summary); a trailing ``*`` matches any field with that prefix."""
    from recipe.papo.config import PapoConfig

    field = name.removeprefix("papo.")
    if isinstance(getattr(PapoConfig, field, None), property):
        return True
    return any(fnmatch.fnmatchcase(option, field) for option in option_names())


@cache
def trainer_config() -> DictConfig:
    """``configs/papo_trainer.yaml`` as ``main_papo`` composes it (``tests/support/papo_configs.py``)."""
    from papo_configs import composed

    return composed()


def config_key_exists(written: str) -> bool:
    """A key of the composed trainer config, or one its nearest existing level accepts.

    A level accepts a missing key when it is a free-form mapping (empty in the YAML, e.g.
    ``engine_kwargs.vllm``), when the dataclass its ``_target_`` names has that field (verl's YAML omits
    some, e.g. ``algorithm.gdpo_reward_keys``), or when the key is written with ``+``/``++`` (Hydra adds it
    under that level, which must be a mapping, not a value).
    """
    config = trainer_config()
    key = written.lstrip("+")
    if OmegaConf.select(config, key, default=_MISSING) is not _MISSING:
        return True
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        parent = OmegaConf.select(config, ".".join(parts[:end]), default=_MISSING)
        if parent is _MISSING:
            continue
        if not isinstance(parent, DictConfig):
            return parent is None and written.startswith("+")
        return written.startswith("+") or len(parent) == 0 or _dataclass_has(parent, parts[end])
    return False


def _dataclass_has(node: DictConfig, field: str) -> bool:
    """The dataclass named by ``node``'s ``_target_`` has a field ``field``."""
    target = node.get("_target_")
    if not target:
        return False
    module_name, _, class_name = str(target).rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    return dataclasses.is_dataclass(cls) and field in {f.name for f in dataclasses.fields(cls)}


def missing_names(text: str, allowed: frozenset[str] = frozenset()) -> list[str]:
    """``"<kind> <name>"`` for each name in ``text`` that does not exist (module docstring), in order.

    Args:
        text: a Markdown page, code blocks included.
        allowed: names a page may mention although they do not exist here (e.g. a misspelled key in an
            example of the error it causes); each needs its reason next to it where it is defined.
    """
    missing: list[str] = []

    def check(kind: str, name: str, exists: bool) -> None:
        line = f"{kind} {name}"
        if not exists and name not in allowed and line not in missing:
            missing.append(line)

    for name in PATH.findall(text):
        check("path", name, path_exists(name))
    for name in DOTTED.findall(text):
        if not name.endswith(FILE_SUFFIXES):
            check("module", name, dotted_exists(name))
    for name in PYTHON_M.findall(text):
        name = name.rstrip(".")  # "python -m data_prep..." names the package
        check("python -m", name, _find_module(name))
    for name in MAKE.findall(text):
        check("make target", name, name in make_targets())
    for name in OPTION.findall(text):
        check("option", name, option_exists(name))
    for name in CONFIG_KEY.findall(text):
        if not name.endswith(FILE_SUFFIXES):
            check("config key", name, config_key_exists(name))
    return missing
