"""The pool file edited in place: a promotion changes the pins it must and nothing else, so comments, order and
the other deployments stay as the person wrote them, and the pull request's diff shows only the promotion."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from lifecycle.pool.schema import Adapter, RegisteredModel


def yaml() -> YAML:
    """The layout `serving/pool.yaml` is written in: two-space mappings, list dashes indented by two."""
    y = YAML(typ="rt")
    y.indent(mapping=2, sequence=4, offset=2)
    y.width = 4096  # never fold a long URI
    y.preserve_quotes = True
    return y


def dump(data: CommentedMap) -> str:
    out = io.StringIO()
    yaml().dump(data, out)
    return out.getvalue()


def served_name(registered_name: str) -> str:
    """A registered model's name as a served name (lowercase letters, digits and dashes, at most 63)."""
    name = re.sub(r"[^a-z0-9]+", "-", registered_name.lower()).strip("-")[:63].strip("-")
    return name or "model"


def pin_model(data: CommentedMap, index: int, pin: RegisteredModel) -> None:
    """Make deployment `index` serve `pin`, keeping the comments on its `model` mapping."""
    deployment = data["deployments"][index]
    current = deployment.get("model")
    values = pin.model_dump(mode="json")
    if isinstance(current, CommentedMap):
        _update(current, values)
    else:
        deployment["model"] = _mapping(values)


def pin_adapter(data: CommentedMap, index: int, pin: Adapter) -> None:
    """Load `pin` on deployment `index`: in place of an adapter of the same registered model, else appended."""
    deployment = data["deployments"][index]
    adapters = deployment.get("adapters")
    if not isinstance(adapters, CommentedSeq):
        adapters = CommentedSeq()
        deployment["adapters"] = adapters
    values = pin.model_dump(mode="json")
    for item in adapters:
        if isinstance(item, CommentedMap) and item.get("model") == pin.model:
            values["name"] = item.get("name", values["name"])  # clients keep the name they call it by
            _update(item, values)
            return
    _block(adapters)
    adapters.append(_mapping(values))


def add_deployment(data: CommentedMap, values: Mapping[str, Any]) -> None:
    """Append a deployment (a promotion of a model no deployment serves yet)."""
    deployments = data.get("deployments")
    if not isinstance(deployments, CommentedSeq):
        deployments = CommentedSeq()
        data["deployments"] = deployments
    _block(deployments)
    deployments.append(_mapping(values))


def _update(target: CommentedMap, values: Mapping[str, Any]) -> None:
    for key in [k for k in target if k not in values]:
        del target[key]
    for key, value in values.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), CommentedMap):
            _update(target[key], value)
        elif target.get(key) != value:
            target[key] = _mapping(value) if isinstance(value, Mapping) else value


def _mapping(values: Any) -> Any:
    if isinstance(values, Mapping):
        out = CommentedMap()
        for key, value in values.items():
            out[key] = _mapping(value)
        return out
    if isinstance(values, list):
        seq = CommentedSeq(_mapping(v) for v in values)
        _block(seq)
        return seq
    return values


def _block(seq: CommentedSeq) -> None:
    """An empty list written as `[]` would take its new items in flow style; lists here are block lists."""
    seq.fa.set_block_style()
