"""Load a recipe: YAML with line numbers, `key.path=value` overrides, validation, and errors a person can act on.

Every problem in a file is reported at once, one line each, as `FILE:LINE: field.path: message`.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from lifecycle.errors import RecipeError
from lifecycle.recipe.schema import DataSpec, QLoraMethod, Recipe

M = TypeVar("M", bound=BaseModel)

# Fields holding paths, resolved against the recipe file's folder before validation.
_PATH_FIELDS = (("data", "train"), ("data", "eval"), ("model", "base"))


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe and where it came from."""

    recipe: Recipe
    path: Path
    text: str
    sha256: str
    overrides: tuple[str, ...]


def load_recipe(path: str | Path, overrides: Sequence[str] = (), *, check_files: bool = True) -> LoadedRecipe:
    """Read, override, resolve paths and validate a recipe file. Raises RecipeError listing every problem."""
    path = Path(path)
    text = _read(path)
    data = _parse(path, text)
    origins: dict[tuple[str, ...], str] = {}
    problems = apply_overrides(data, overrides, origins)
    _resolve_paths(data, path.parent)
    recipe, more = validate_model(
        Recipe, data, path, context={"skip_file_checks": not check_files}, origins=origins
    )
    problems += more
    if recipe is not None:
        problems += _hardware_checks(recipe, data, path)
    if problems:
        raise RecipeError(problems)
    assert recipe is not None
    digest = hashlib.sha256(text.encode()).hexdigest()
    return LoadedRecipe(recipe=recipe, path=path, text=text, sha256=digest, overrides=tuple(overrides))


def locate(loaded: LoadedRecipe, *loc: str | int) -> str:
    """`FILE:LINE` (or the override) where the value at `loc` of a loaded recipe came from: for checks that
    run after validation (SkyPilot's catalog, the gate's task registry) to report like schema errors."""
    origins = {tuple(item.partition("=")[0].split(".")): item for item in loaded.overrides}
    return _origin(_parse(loaded.path, loaded.text), tuple(loc), loaded.path, origins)


def load_model_file(model: type[M], path: str | Path) -> M:
    """Load any other YAML config (an eval suite, a pool) with the same error reporting."""
    path = Path(path)
    data = _parse(path, _read(path))
    result, problems = validate_model(model, data, path)
    if problems:
        raise RecipeError(problems)
    assert result is not None
    return result


# ----------------------------------------------------------------------------------------------- parsing


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError([f"{path}: no such file"]) from None
    except IsADirectoryError:
        raise RecipeError([f"{path}: is a folder, not a YAML file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError([f"{path}: cannot be read: {exc}"]) from None


def _parse(path: Path, text: str) -> CommentedMap:
    try:
        data = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise RecipeError([f"{path}:{line}: invalid YAML: {exc.problem or exc.context}"]) from None
    except Exception as exc:  # ruamel raises a few unmarked errors (duplicate keys, bad tags)
        raise RecipeError([f"{path}:1: invalid YAML: {exc}"]) from None
    if data is None:
        raise RecipeError([f"{path}:1: the file is empty"])
    if not isinstance(data, CommentedMap):
        raise RecipeError([f"{path}:1: expected a mapping of keys to values at the top level"])
    return data


def apply_overrides(
    data: CommentedMap, overrides: Iterable[str], origins: dict[tuple[str, ...], str]
) -> list[str]:
    """Apply `a.b.c=value` overrides in place (value parsed as YAML), recording in `origins` which override
    set which key path so errors can name it. Returns problems."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            problems.append(f"override {item!r}: expected key.path=value")
            continue
        try:
            value = YAML(typ="safe").load(raw) if raw.strip() else ""
        except Exception:
            value = raw
        node: Any = data
        parts = key.split(".")
        for part in parts[:-1]:
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                problems.append(f"override {item!r}: {part!r} is not a mapping")
                break
            if part not in node or not isinstance(node[part], (dict, list)):
                node[part] = CommentedMap()
            node = node[part]
        else:
            if isinstance(node, list) and parts[-1].isdigit():
                node[int(parts[-1])] = value
            else:
                node[parts[-1]] = value
            origins[tuple(parts)] = item
    return problems


def _resolve_paths(data: CommentedMap, base: Path) -> None:
    for section, key in _PATH_FIELDS:
        node = data.get(section)
        if not isinstance(node, dict) or not isinstance(node.get(key), str):
            continue
        value: str = node[key]
        # a hub id or builtin name stays as written; only things that look like paths are resolved
        looks_like_name = value.startswith("builtin:") or not value.startswith((".", "/", "~"))
        if section == "model" and looks_like_name and not (base / value).is_dir():
            continue
        resolved = (base / Path(value).expanduser()).resolve()
        node[key] = str(resolved)


# ----------------------------------------------------------------------------------------------- validation


def validate_model(
    model: type[M],
    data: CommentedMap,
    path: Path,
    context: dict[str, Any] | None = None,
    origins: dict[tuple[str, ...], str] | None = None,
) -> tuple[M | None, list[str]]:
    try:
        return model.model_validate(data, context=context), []
    except ValidationError as exc:
        return None, [
            _format_error(err, model, data, path, origins or {}) for err in exc.errors(include_url=False)
        ]


def _format_error(
    err: Any, model: type[BaseModel], data: CommentedMap, path: Path, origins: dict[tuple[str, ...], str]
) -> str:
    loc: tuple[Any, ...] = tuple(err["loc"])
    # pydantic puts the union tag into the location ('method', 'lora', 'r'); readers know only their keys
    loc = tuple(part for part in loc if not _is_union_tag(part, data, loc))
    if err["type"] == "union_tag_invalid" and isinstance(err.get("ctx", {}).get("discriminator"), str):
        loc = (*loc, err["ctx"]["discriminator"].strip("'"))  # point at the tag's own line
    where = _origin(data, loc, path, origins)
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    message = err["msg"]
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1], data)
        message = f"unknown field {loc[-1]!r}"
        guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
        if guess:
            message += f"; did you mean {guess[0]!r}?"
        if allowed:
            message += f" (allowed: {', '.join(sorted(allowed))})"
    elif kind == "missing":
        message = "required field is missing"
    elif kind == "value_error":
        message = message.removeprefix("Value error, ")
    elif kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        message = f"unknown {ctx.get('discriminator', 'kind')} {ctx.get('tag')!r}; allowed: {ctx.get('expected_tags')}"
    elif kind == "union_tag_not_found":
        message = (
            f"missing {err.get('ctx', {}).get('discriminator', 'kind')}, which says which variant this is"
        )
    return f"{where}: {dotted}: {message}"


def _is_union_tag(part: Any, data: Any, loc: tuple[Any, ...]) -> bool:
    """True when `part` in `loc` is a discriminator tag pydantic inserted, not a key of the file."""
    node = data
    for item in loc:
        if item == part:
            return (
                not (isinstance(node, dict) and part in node)
                and isinstance(part, str)
                and _is_tag_of(node, part)
            )
        if (
            isinstance(node, dict)
            and item in node
            or isinstance(node, list)
            and isinstance(item, int)
            and item < len(node)
        ):
            node = node[item]
        else:
            return False
    return False


def _is_tag_of(node: Any, part: str) -> bool:
    return isinstance(node, dict) and node.get("kind") == part


def _origin(
    data: CommentedMap, loc: tuple[Any, ...], path: Path, origins: dict[tuple[str, ...], str] | None = None
) -> str:
    """`FILE:LINE` of the deepest key of `loc` present in the file, or the override that set it."""
    for key, item in (origins or {}).items():
        if tuple(str(p) for p in loc[: len(key)]) == key or key[: len(loc)] == tuple(str(p) for p in loc):
            return f"{path}: override {item!r}"
    node: Any = data
    line = 1
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            pos = node.lc.key(part) if part in node.lc.data else None
            if pos is not None:
                line = pos[0] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            pos = node.lc.item(part) if part in node.lc.data else None
            if pos is not None:
                line = pos[0] + 1
            node = node[part]
        else:
            break
    return f"{path}:{line}"


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...], data: Any) -> list[str]:
    """Field names of the model that sits at `loc` (following unions by their 'kind' in the data)."""
    current: Any = model
    node = data
    for part in loc:
        node = node.get(part) if isinstance(node, dict) else (node[part] if isinstance(node, list) else None)
        if isinstance(part, int):
            current = _inner(current)
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        fields = {f.alias or name: f for name, f in current.model_fields.items()}
        if part not in fields:
            return []
        current = _pick(fields[part].annotation, node)
    current = _pick(current, node)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or name for name, f in current.model_fields.items()]
    return []


def _pick(annotation: Any, node: Any) -> Any:
    """Resolve Optional/list/Annotated/union annotations to the model class the node is an instance of."""
    import typing

    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _pick(typing.get_args(annotation)[0], node)
    if origin in (list, tuple):
        return typing.get_args(annotation)[0]
    args = typing.get_args(annotation)
    if args and origin is not typing.Literal:
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(node, dict):
            for m in models:
                kind = m.model_fields.get("kind")
                if kind is not None and node.get("kind") in typing.get_args(kind.annotation):
                    return m
        if len(models) == 1:
            return models[0]
        for a in args:
            if typing.get_origin(a) in (list, tuple):
                return a
    return annotation


def _inner(annotation: Any) -> Any:
    import typing

    args = typing.get_args(annotation)
    return args[0] if args else annotation


def _hardware_checks(recipe: Recipe, data: CommentedMap, path: Path) -> list[str]:
    """Checks that depend on this machine, reported like schema errors."""
    problems = []
    if isinstance(recipe.method, QLoraMethod) and recipe.launch.kind == "local":
        import torch  # only for qlora recipes: keeps `lifecycle validate` fast otherwise

        if not torch.cuda.is_available():
            where = _origin(data, ("method", "kind"), path)
            problems.append(
                f"{where}: method.kind: 'qlora' loads the base in 4-bit, which needs a CUDA GPU and none is "
                "present; use kind 'lora' here, or launch.kind 'sky'"
            )
    return problems


def data_files(spec: DataSpec) -> dict[str, Path]:
    """The data files a recipe names, keyed by split."""
    files = {"train": spec.train}
    if spec.eval is not None:
        files["eval"] = spec.eval
    return files
