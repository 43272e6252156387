"""Load a recipe: YAML with line numbers, `key.path=value` overrides, validation, and errors a person can act on.

Every problem in a file is reported at once, one line each, as `FILE:LINE: field.path: message`.
"""

from __future__ import annotations

import difflib
import enum
import hashlib
import re
import typing
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
# The same in each item of a list: (section, list, key).
_LIST_PATH_FIELDS = (("data", "mix", "path"),)


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
    text = read_text(path)
    data = parse_yaml(path, text)
    origins: dict[tuple[str, ...], str] = {}
    problems = [f"{path}: {problem}" for problem in apply_overrides(data, overrides, origins)]
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
    origins = {
        tuple(str(p) for p in _override_path(item.partition("=")[0])): item for item in loaded.overrides
    }
    return origin_of(parse_yaml(loaded.path, loaded.text), tuple(loc), loaded.path, origins)


def load_model_file(model: type[M], path: str | Path) -> M:
    """Load any other YAML config (an eval suite, a pool) with the same error reporting."""
    path = Path(path)
    data = parse_yaml(path, read_text(path))
    result, problems = validate_model(model, data, path)
    if problems:
        raise RecipeError(problems)
    assert result is not None
    return result


# ----------------------------------------------------------------------------------------------- parsing


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError([f"{path}: no such file"]) from None
    except IsADirectoryError:
        raise RecipeError([f"{path}: is a folder, not a YAML file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError([f"{path}: cannot be read: {exc}"]) from None


def parse_yaml(path: Path, text: str) -> CommentedMap:
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
    set which key path so errors can name it. List items are addressed as `a.b[0].c` or `a.b.0.c`; an index
    must name an existing item. Returns problems as `override 'a.b=x': field: message`."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        try:
            if not sep or not key:
                raise ValueError("expected key.path=value")
            parts = _override_path(key)
        except ValueError as exc:
            problems.append(f"override {item!r}: {exc}")
            continue
        try:
            value = YAML(typ="safe").load(raw) if raw.strip() else ""
        except Exception:
            value = raw
        problem = _set_path(data, parts, value)
        if problem:
            problems.append(f"override {item!r}: {problem}")
        else:
            origins[tuple(str(p) for p in parts)] = item
    return problems


_KEY_SEGMENT = re.compile(r"([^.\[\]]+)((?:\[\d+\])*)")


def _override_path(key: str) -> list[str | int]:
    """`a.b[0].c`, `a.b[0][1]` or `a.b.0.c` as keys (str) and list indexes (int); ValueError if malformed."""
    parts: list[str | int] = []
    for segment in key.split("."):
        match = _KEY_SEGMENT.fullmatch(segment.strip())
        if match is None:
            raise ValueError(f"{key!r} is not a key path like 'a.b.c' or 'a.b[0].c'")
        name, indexes = match.groups()
        parts.append(int(name) if name.isascii() and name.isdigit() else name)
        parts += [int(i) for i in re.findall(r"\d+", indexes)]
    return parts


def _set_path(data: CommentedMap, parts: list[str | int], value: Any) -> str | None:
    """Set `value` at `parts`, creating missing mappings (never lists). Returns `field: message` if the path
    cannot be set, and then `data` is unchanged."""
    node: Any = data
    for depth, part in enumerate(parts):
        field, parent = _dotted(parts[: depth + 1]), _dotted(parts[:depth])
        if isinstance(part, int):
            if not isinstance(node, list):
                return f"{field}: {parent} is {_describe(node)}, not a list"
            if part >= len(node):
                count = f"{len(node)} item" + ("" if len(node) == 1 else "s")
                return f"{field}: index out of range (the list has {count})"
        elif not isinstance(node, dict):
            return f"{field}: {parent} is {_describe(node)}, not a mapping"
        rest = parts[depth + 1 :]
        if rest and isinstance(node, dict) and not isinstance(node.get(part), (dict, list)):
            # the rest of the path is not in the file (or replaces a scalar): it becomes nested mappings,
            # so an index into it has nothing to point at
            first = next((i for i, later in enumerate(rest) if isinstance(later, int)), None)
            if first is not None:
                where = parts[: depth + 1 + first]
                problem = f"{_dotted(where)} is not in the recipe, so it has no items (set the whole list)"
                if first == 0 and part in node:
                    problem = f"{_dotted(where)} is {_describe(node[part])}, not a list"
                return f"{_dotted(parts[: depth + 2 + first])}: {problem}"
            for later in reversed(rest):
                value = CommentedMap({later: value})
            rest = []
        if not rest:
            node[part] = value
            return None
        node = node[part]
    return None


def _dotted(parts: Sequence[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".") or "(top level)"


def _describe(node: Any) -> str:
    if isinstance(node, dict):
        return "a mapping"
    if isinstance(node, list):
        return "a list"
    return "null" if node is None else f"the value {node!r}"


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
    for section, name, key in _LIST_PATH_FIELDS:
        node = data.get(section)
        items = node.get(name) if isinstance(node, dict) else None
        for item in items if isinstance(items, list) else ():
            if isinstance(item, dict) and isinstance(item.get(key), str):
                item[key] = str((base / Path(item[key]).expanduser()).resolve())


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
        errors = _merge_literal_unions(exc.errors(include_url=False))
        return None, [_format_error(err, model, data, path, origins or {}) for err in errors]


def _merge_literal_unions(errors: list[Any]) -> list[Any]:
    """A value that fits no member of `Literal[...] | other` fails once per member, under pydantic's labels
    ("literal['auto']", 'bool'). A scalar becomes one literal_error at the field that names the other members;
    for a list or mapping the literal's error is dropped and the others lose the label."""
    fields = {
        tuple(err["loc"][:i]): err
        for err in errors
        for i, part in enumerate(err["loc"])
        if err["type"] == "literal_error" and isinstance(part, str) and part.startswith("literal[")
    }
    out: list[Any] = []
    done: dict[tuple[Any, ...], dict[str, Any]] = {}
    for err in errors:
        loc = tuple(err["loc"])
        field = next((f for f in fields if loc[: len(f)] == f and len(loc) > len(f)), None)
        if field is None:
            out.append(err)
            continue
        literal, label = fields[field], loc[len(field)]
        if isinstance(literal["input"], (dict, list)):
            if err is not literal:
                out.append({**err, "loc": (*field, *loc[len(field) + 1 :])})
        elif field not in done:
            done[field] = {**literal, "loc": field, "ctx": {**literal.get("ctx", {}), "others": []}}
            out.append(done[field])
        if err is not literal and field in done and label not in done[field]["ctx"]["others"]:
            done[field]["ctx"]["others"].append(label)
    return out


def _format_error(
    err: Any, model: type[BaseModel], data: CommentedMap, path: Path, origins: dict[tuple[str, ...], str]
) -> str:
    loc: tuple[Any, ...] = tuple(err["loc"])
    # pydantic puts the union tag into the location ('method', 'lora', 'r'); readers know only their keys
    loc = tuple(part for part in loc if not _is_union_tag(part, data, loc))
    union_loc = loc
    if err["type"] == "union_tag_invalid" and isinstance(err.get("ctx", {}).get("discriminator"), str):
        loc = (*loc, err["ctx"]["discriminator"].strip("'"))  # point at the tag's own line
    where = origin_of(data, loc, path, origins)
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    message = err["msg"]
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1], data)
        message = f"unknown field {loc[-1]!r}"
        guess = _closest(str(loc[-1]), allowed)
        if guess:
            message += f"; did you mean {guess!r}?"
        if allowed:
            message += f" (allowed: {', '.join(sorted(allowed))})"
    elif kind in ("literal_error", "enum"):
        choices = _choices(_annotation_at(model, loc, data)) or _quoted(
            err.get("ctx", {}).get("expected", "")
        )
        others = err.get("ctx", {}).get("others", ())
        message = _unknown("value", err.get("input"), choices, others) if choices else message
    elif kind == "missing":
        message = "required field is missing"
    elif kind == "value_error":
        message = message.removeprefix("Value error, ")
    elif kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        tag_field = str(ctx.get("discriminator", "kind")).strip("'")
        tags = _tags(_annotation_at(model, union_loc, data), tag_field) or _quoted(
            ctx.get("expected_tags", "")
        )
        message = _unknown(tag_field, ctx.get("tag"), tags)
    elif kind == "union_tag_not_found":
        message = (
            f"missing {err.get('ctx', {}).get('discriminator', 'kind')}, which says which variant this is"
        )
    return f"{where}: {dotted}: {message}"


def _closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice nearest to a typo, ignoring case (`fp8_dynamic` -> `FP8_DYNAMIC`); None if none is close."""
    by_lower = {choice.lower(): choice for choice in choices}
    guess = difflib.get_close_matches(word.lower(), by_lower, n=1, cutoff=0.6)
    return by_lower[guess[0]] if guess else None


def _unknown(what: str, value: Any, choices: Sequence[Any], others: Sequence[str] = ()) -> str:
    """`unknown value 'x'; did you mean 'y'? (allowed: 'y', 'z')` for a value outside a fixed set; `others`
    names the other types a union accepts."""
    allowed = ", ".join([repr(c) for c in choices] + [f"or a {other}" for other in others])
    if isinstance(value, (dict, list)):
        return f"expected one of {allowed}, not a {'mapping' if isinstance(value, dict) else 'list'}"
    message = f"unknown {what} {value!r}"
    guess = _closest(str(value), [c for c in choices if isinstance(c, str)])
    if guess is not None and guess != value:
        message += f"; did you mean {guess!r}?"
    return f"{message} (allowed: {allowed})"


def _choices(annotation: Any) -> list[Any]:
    """The values a Literal or Enum annotation (or a union of them) allows, in declaration order."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return list(typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [member.value for member in annotation]
    if origin is not None:  # Annotated, Optional, unions
        return [c for arg in typing.get_args(annotation) for c in _choices(arg)]
    return []


def _tags(annotation: Any, tag_field: str) -> list[Any]:
    """The tags of a discriminated union: each variant model's Literal `tag_field`."""
    return [
        tag
        for arg in typing.get_args(annotation)
        if isinstance(arg, type) and issubclass(arg, BaseModel) and tag_field in arg.model_fields
        for tag in _choices(arg.model_fields[tag_field].annotation)
    ] or [tag for arg in typing.get_args(annotation) for tag in _tags(arg, tag_field)]


def _quoted(expected: str) -> list[str]:
    """The quoted values in pydantic's `'a', 'b' or 'c'`: the fallback when the schema cannot be walked."""
    return re.findall(r"'([^']*)'", expected)


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


def origin_of(
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
    current = _annotation_at(model, loc, data)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or name for name, f in current.model_fields.items()]
    return []


def _annotation_at(model: type[BaseModel], loc: tuple[Any, ...], data: Any) -> Any:
    """The annotation of what sits at `loc` (unions resolved by the data's 'kind'); None if `loc` leaves
    the schema."""
    current: Any = model
    node = data
    for part in loc:
        if isinstance(node, dict):
            node = node.get(part)
        else:
            in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
            node = node[part] if in_list else None
        if isinstance(part, int):
            current = _inner(current)
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        fields = {f.alias or name: f for name, f in current.model_fields.items()}
        if part not in fields:
            return None
        current = _pick(fields[part].annotation, node)
    return _pick(current, node)


def _pick(annotation: Any, node: Any) -> Any:
    """Resolve Optional/list/Annotated/union annotations to the model class the node is an instance of."""
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
    args = typing.get_args(annotation)
    return args[0] if args else annotation


def _hardware_checks(recipe: Recipe, data: CommentedMap, path: Path) -> list[str]:
    """Checks that depend on this machine, reported like schema errors."""
    problems = []
    if isinstance(recipe.method, QLoraMethod) and recipe.launch.kind == "local":
        import torch  # only for qlora recipes: keeps `lifecycle validate` fast otherwise

        if not torch.cuda.is_available():
            where = origin_of(data, ("method", "kind"), path)
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
