"""Loading a recipe: YAML parsing, ``--set`` overrides, validation with readable errors.

Re-exported by :mod:`posttrain.config` (``from posttrain.config import load_recipe`` keeps working).

``Recipe`` is imported inside the functions that need it, not at the top: ``posttrain.config``
imports this module at its top to re-export it, so a top-level ``from posttrain.config import
Recipe`` here would make the two modules import each other. With the deferred import the import
graph stays acyclic and either module can be imported first (the alternative, config importing
this module at its end, fails with a partially initialised module when this one is imported first).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from posttrain.data.loading import MixtureSpec

if TYPE_CHECKING:
    from posttrain.config import Recipe


class RecipeError(ValueError):
    """A recipe file or override is invalid; the message names the file and each bad field
    (a dotted path, list items as ``[i]``: ``rl_math.data[0].source``)."""


def _dotted(loc: tuple | list) -> str:
    """A pydantic error location as a dotted path: ``("sft_stage1", "data", 0, "limit")`` ->
    ``sft_stage1.data[0].limit``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f"{'.' if out else ''}{part}"
    return out or "<recipe>"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation may hold directly (``X``, ``X | None``)."""
    members = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    return [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]


def _fields_at(loc: tuple | list) -> list[str]:
    """The field names the recipe schema allows at ``loc`` (for "did you mean" hints); [] if unknown."""
    from posttrain.config import Recipe  # deferred: see the module docstring

    annotations: list[Any] = [Recipe]
    for part in loc:
        inner = []
        for annotation in annotations:
            members = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
            for member in members:
                if isinstance(member, type) and issubclass(member, BaseModel):
                    if isinstance(part, str) and part in member.model_fields:
                        inner.append(member.model_fields[part].annotation)
                elif get_origin(member) in (list, dict) and get_args(member):
                    inner.append(get_args(member)[-1])  # list[X] -> X, dict[K, V] -> V
        annotations = inner
    return sorted({name for a in annotations for m in _models_in(a) for name in m.model_fields})


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(err: dict) -> str:
    """One line for one pydantic error: the dotted field, what is wrong, and a hint."""
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        known = _fields_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else (f"; fields here: {', '.join(known)}" if known else "")
        return f"{_dotted(loc)}: unknown field{hint}"
    message = err["msg"]
    value = err.get("input")
    if err["type"] not in ("missing", "value_error", "assertion_error") and not isinstance(value, (dict, BaseModel)):
        message += f" (got {_show(value)})"
    return f"{_dotted(loc)}: {message}"


def _set_dotted(tree: dict, dotted: str, value: Any, path: str) -> None:
    """Set ``tree[a][b]...[z] = value`` for ``dotted`` = ``a.b...z``; a missing or null section is
    created; a number indexes a list (``evaluate.benchmarks.0.limit``).

    Raises:
        RecipeError: for an empty key, a path through a value that is not a section, or a bad
            list index; naming ``path`` and the override.
    """
    keys = dotted.split(".")
    if any(not k.strip() for k in keys):
        raise RecipeError(f"{path}: --set {dotted!r}: empty key in the dotted path")
    node: Any = tree
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not (key.isascii() and key.isdigit()) or int(key) >= len(node):
                raise RecipeError(f"{path}: --set {dotted}: {'.'.join(keys[:depth])!r} is a list of {len(node)} "
                                  f"items; {key!r} is not an index into it")
            key = int(key)  # type: ignore[assignment]
        elif not isinstance(node, dict):
            raise RecipeError(f"{path}: --set {dotted}: {'.'.join(keys[:depth])!r} is not a section of the recipe")
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and node.get(key) is None:  # a section left to its defaults in the file
                node[key] = {}
            node = node[key]


def apply_overrides(tree: dict, overrides: list[str] | None, path: str = "<recipe>") -> dict:
    """Set each ``key.path=value`` of ``overrides`` in the recipe tree (values parsed as YAML).

    Raises:
        RecipeError: naming ``path`` and the override, for one without ``=``, a value that is
            not YAML, or a path that crosses a non-section (see ``_set_dotted``).
    """
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise RecipeError(f"{path}: --set {item!r}: expected key.path=value")
        try:
            value = yaml.safe_load(raw)
        except (yaml.YAMLError, ValueError, RecursionError) as e:
            raise RecipeError(f"{path}: --set {item!r}: the value is not valid YAML ({e})") from None
        _set_dotted(tree, key.strip(), value, path)
    return tree


def _mixtures(obj: Any, where: str = ""):
    """``(dotted path, MixtureSpec)`` of every data source a recipe names, wherever it sits."""
    if isinstance(obj, MixtureSpec):
        yield where, obj
    elif isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            yield from _mixtures(getattr(obj, name), f"{where}.{name}" if where else name)
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from _mixtures(item, f"{where}[{i}]")
    elif isinstance(obj, dict):
        for key, item in obj.items():
            yield from _mixtures(item, f"{where}.{key}")


def _unknown_names(recipe: Recipe) -> list[str]:
    """Lines for every data source and benchmark the recipe names that is not registered
    (sources read from an ``hf://`` root take any name)."""
    from posttrain.data import UnknownSourceError, check_benchmark, get_source, resolve_data_root

    def hub(root: str | None) -> bool:
        return resolve_data_root(root).startswith("hf://")

    lines = []
    for where, spec in _mixtures(recipe):
        if not hub(spec.data_root if spec.data_root is not None else recipe.data_root):
            try:
                get_source(spec.source)
            except UnknownSourceError as e:
                lines.append(f"{where}.source: {e}")
    if recipe.model.tiny is not None and not hub(recipe.data_root):
        for i, name in enumerate(recipe.model.tiny.tokenizer_sources):
            try:
                get_source(name)
            except UnknownSourceError as e:
                lines.append(f"model.tiny.tokenizer_sources[{i}]: {e}")
    named = [(f"evaluate.benchmarks[{i}].name", b.name) for i, b in enumerate(recipe.evaluate.benchmarks)]
    named += [(f"decontamination.benchmarks[{i}]", n) for i, n in enumerate(recipe.decontamination.benchmarks or [])]
    for where, name in named:
        try:
            check_benchmark(name)
        except UnknownSourceError as e:
            lines.append(f"{where}: {e}")
    return lines


def _within(a: str, b: str) -> bool:
    """True if one dotted path lies inside the other (``rl_mat`` and ``rl_mat.train.max_steps``)."""
    short, long = sorted((a, b), key=len)
    return long == short or long.startswith(short + ".") or long.startswith(short + "[")


def validate_recipe(tree: Any, path: str = "<recipe>", overrides: list[str] | None = None) -> Recipe:
    """The ``Recipe`` of a parsed tree, every data source and benchmark it names registered.

    ``overrides`` (the ``--set`` items already applied to ``tree``) only annotate the errors
    of the fields they set.

    Raises:
        RecipeError: naming ``path`` and, one per line, each invalid field as a dotted path:
            unknown keys (with the closest known one), wrong types (the expected type and the
            value given), failed checks, unknown data sources and benchmarks.
    """
    from posttrain.config import Recipe  # deferred: see the module docstring

    try:
        recipe = Recipe.model_validate(tree)
    except ValidationError as e:
        lines = [_describe(err) for err in e.errors()]
    else:
        lines = _unknown_names(recipe)
        if not lines:
            return recipe
    for item in overrides or []:
        key = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", item.partition("=")[0].strip())  # a.0.b -> a[0].b
        lines = [f"{line} (set by --set {item})" if _within(line.split(": ", 1)[0], key) else line
                 for line in lines]
    raise RecipeError(f"{path}: invalid recipe:\n  " + "\n  ".join(lines))


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a YAML recipe and apply ``key.path=value`` overrides (values parsed as YAML).

    Raises:
        RecipeError: naming the file, and each invalid field (see ``validate_recipe``), or why
            the file cannot be read (missing, not UTF-8, not YAML, not a mapping).
    """
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError, RecursionError) as e:
        # ValueError: a YAML timestamp such as 2024-13-45 fails in datetime, not in the parser
        raise RecipeError(f"{path}: cannot read recipe: {e}") from None
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping, got {type(tree).__name__}")
    return validate_recipe(apply_overrides(tree, overrides, str(path)), str(path), overrides)


def resolve_recipe(recipe_path: str, recipe: Recipe | None = None,
                   overrides: list[str] | None = None) -> tuple[Recipe, str]:
    """The recipe a flow runs and a label for it: ``recipe`` itself (a flow parameter, shown in
    the Prefect UI as a form; label ``<parameter>``) when given, else the file at
    ``recipe_path``; ``overrides`` apply to either.

    Raises:
        RecipeError: as ``load_recipe`` / ``validate_recipe``.
    """
    if recipe is None:
        return load_recipe(recipe_path, overrides), recipe_path
    label = "<parameter>"
    return validate_recipe(apply_overrides(recipe.model_dump(mode="json"), overrides, label), label, overrides), label


def config_hash(obj: Any) -> str:
    """sha256 of a JSON-able object or pydantic model, keys sorted."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
