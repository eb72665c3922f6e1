"""Patch types and field ownership: JSON merge patch (RFC 7386), an approximation of strategic
merge patch, and an approximation of server-side apply's field management.

What is approximated (see README.md):

- **Field sets are sets of leaf paths.** A path is a tuple of map keys. A list is always one leaf
  (atomic): the real API server merges lists with merge keys (containers by name, ...) and
  tracks ownership per element; here two managers writing different elements of one list take
  the list from each other.
- **Apply** merges the applied configuration into the live object (maps merge, lists and scalars
  are replaced), removes the fields the same manager applied last time but no longer applies
  when no other manager owns them, and answers a conflict when a field owned by another manager
  would get a different value, unless `force=true`. Conflicts are computed per leaf path.
- **Update** (PUT, merge/strategic/JSON patch) takes ownership of every leaf whose value changed
  and removes it from the other managers.
- **Strategic merge patch** merges lists of maps by the first of a few well-known merge keys
  (`name`, `containerPort`, `port`, `mountPath`, `devicePath`, `ip`, `type`, `topologyKey`) that
  every element carries, and honours `$patch: delete|replace`, `$retainKeys`,
  `$deleteFromPrimitiveList/` and `$setElementOrder/` (the last only by dropping it). It does
  not read each type's real patch strategy from OpenAPI.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

Path = tuple[str, ...]

# metadata fields that are owned by managers; the rest of metadata is the server's.
_OWNED_METADATA = ('labels', 'annotations', 'ownerReferences', 'finalizers')
_SMP_MERGE_KEYS = ('name', 'containerPort', 'port', 'mountPath', 'devicePath', 'ip', 'type',
                   'topologyKey')


def clone(value: Any) -> Any:
    """A deep copy of a JSON value (faster than copy.deepcopy for plain JSON)."""
    return json.loads(json.dumps(value))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: maps merge, `null` deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return clone(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _smp_merge_key(items: list[Any], patch_items: list[Any]) -> str | None:
    dicts = [i for i in patch_items if isinstance(i, dict)]
    if not dicts or len(dicts) != len(patch_items) or not all(isinstance(i, dict) for i in items):
        return None
    for key in _SMP_MERGE_KEYS:
        if all(key in i for i in dicts) and all(key in i for i in items):
            return key
    return None


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """An approximation of Kubernetes' strategic merge patch (see the module docs)."""
    if not isinstance(patch, dict):
        return clone(patch)
    if patch.get('$patch') == 'replace':
        return {k: clone(v) for k, v in patch.items() if k != '$patch'}
    if patch.get('$patch') == 'delete':
        return None
    result = dict(target) if isinstance(target, dict) else {}
    retain = patch.get('$retainKeys')
    for key, value in patch.items():
        if key in ('$patch', '$retainKeys') or key.startswith('$setElementOrder/'):
            continue
        if key.startswith('$deleteFromPrimitiveList/'):
            field = key.split('/', 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _smp_list(result[key], value)
        elif isinstance(value, list):
            result[key] = [clone(v) for v in value
                           if not (isinstance(v, dict) and v.get('$patch') == 'delete')]
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _smp_list(items: list[Any], patch_items: list[Any]) -> list[Any]:
    key = _smp_merge_key(items, patch_items)
    if key is None:
        return [clone(v) for v in patch_items]
    merged = [dict(i) for i in items]
    for p in patch_items:
        idx = next((n for n, i in enumerate(merged) if i.get(key) == p.get(key)), None)
        if p.get('$patch') == 'delete':
            if idx is not None:
                merged.pop(idx)
        elif idx is None:
            merged.append(strategic_merge_patch({}, p))
        else:
            merged[idx] = strategic_merge_patch(merged[idx], p)
    return merged


def leaf_paths(obj: dict[str, Any], include_status: bool, only_status: bool = False) -> set[Path]:
    """The leaf paths of an object that field management tracks.

    `apiVersion`, `kind` and the server-owned parts of `metadata` are not tracked. With
    `only_status`, only `status.*` paths; without `include_status`, none of them.
    """
    paths: set[Path] = set()
    for key, value in obj.items():
        if key in ('apiVersion', 'kind'):
            continue
        if key == 'metadata':
            if only_status or not isinstance(value, dict):
                continue
            for mkey in _OWNED_METADATA:
                if mkey in value:
                    paths |= set(_walk(value[mkey], ('metadata', mkey)))
            continue
        if key == 'status':
            if include_status or only_status:
                paths |= set(_walk(value, ('status',)))
            continue
        if not only_status:
            paths |= set(_walk(value, (key,)))
    return paths


def _walk(value: Any, prefix: Path) -> Iterator[Path]:
    if isinstance(value, dict) and value:
        for key, child in value.items():
            yield from _walk(child, prefix + (key,))
    else:
        yield prefix


def get_path(obj: Any, path: Path) -> Any:
    """The value at `path`, or a sentinel `MISSING`."""
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return MISSING
        obj = obj[key]
    return obj


def delete_path(obj: dict[str, Any], path: Path) -> None:
    """Removes the value at `path`, then every map on the way that became empty."""
    parents: list[tuple[dict[str, Any], str]] = []
    node: Any = obj
    for key in path[:-1]:
        if not isinstance(node, dict) or key not in node:
            return
        parents.append((node, key))
        node = node[key]
    if isinstance(node, dict):
        node.pop(path[-1], None)
        for parent, key in reversed(parents):
            if parent[key] == {}:
                del parent[key]
            else:
                break


def deep_merge(live: Any, applied: Any) -> Any:
    """Apply's merge: maps merge recursively, lists and scalars from `applied` replace."""
    if isinstance(live, dict) and isinstance(applied, dict):
        result = dict(live)
        for key, value in applied.items():
            result[key] = deep_merge(live.get(key), value)
        return result
    return clone(applied)


class _Missing:
    def __repr__(self) -> str:
        return 'MISSING'


MISSING = _Missing()


def changed_paths(old: dict[str, Any], new: dict[str, Any], include_status: bool,
                  only_status: bool = False) -> tuple[set[Path], set[Path]]:
    """Leaf paths whose value differs between `old` and `new`: (changed or added, removed)."""
    old_paths = leaf_paths(old, include_status, only_status)
    new_paths = leaf_paths(new, include_status, only_status)
    changed = {p for p in new_paths if get_path(old, p) != get_path(new, p)}
    removed = {p for p in old_paths - new_paths if get_path(new, p) is MISSING}
    return changed, removed


def render_fields_v1(paths: set[Path]) -> dict[str, Any]:
    """Paths in the `fieldsV1` shape (`{"f:spec": {"f:replicas": {}}}`), for managedFields."""
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for key in path:
            node = node.setdefault(f'f:{key}', {})
    return root
