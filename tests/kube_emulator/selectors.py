"""Label and field selectors, as `?labelSelector=` and `?fieldSelector=` on list and watch.

Label selectors support the whole documented grammar: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
`k notin (a,b)`, `k` and `!k`, joined by commas. Field selectors support `metadata.name` and
`metadata.namespace` with `=`, `==` and `!=` (what kube-runtime and kubectl send); any other
field is refused with 400, as a real API server does for unsupported fields.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any


class SelectorError(ValueError):
    """A selector the emulator cannot parse (answered as 400 Bad Request)."""


Predicate = Callable[[Mapping[str, Any]], bool]

_SET_RE = re.compile(r'^\s*(!?)\s*([A-Za-z0-9._/-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$')
_EQ_RE = re.compile(r'^\s*([A-Za-z0-9._/-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*$')


def _split_top_level(selector: str) -> list[str]:
    """Splits on commas that are not inside `( … )`."""
    parts, depth, current = [], 0, []
    for ch in selector:
        if ch == '(':
            depth += 1
        elif ch == ')':
            depth -= 1
        if ch == ',' and depth == 0:
            parts.append(''.join(current))
            current = []
        else:
            current.append(ch)
    parts.append(''.join(current))
    return [p for p in (p.strip() for p in parts) if p]


def label_selector(selector: str | None) -> Predicate:
    """A predicate over an object's `metadata.labels` for a label selector string."""
    if not selector:
        return lambda labels: True
    checks: list[Predicate] = []
    for term in _split_top_level(selector):
        eq = _EQ_RE.match(term)
        if eq:
            key, op, value = eq.groups()
            if op == '!=':
                checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
            continue
        st = _SET_RE.match(term)
        if not st:
            raise SelectorError(f'unable to parse requirement: {term!r}')
        negate, key, op, values = st.groups()
        if op is None:
            if negate:
                checks.append(lambda labels, k=key: k not in labels)
            else:
                checks.append(lambda labels, k=key: k in labels)
            continue
        if negate:
            raise SelectorError(f'unable to parse requirement: {term!r}')
        allowed = {v.strip() for v in values.split(',') if v.strip()}
        if op == 'in':
            checks.append(lambda labels, k=key, a=allowed: labels.get(k) in a)
        else:
            checks.append(lambda labels, k=key, a=allowed: labels.get(k) not in a)
    return lambda labels: all(check(labels) for check in checks)


_FIELDS = {
    'metadata.name': lambda obj: obj.get('metadata', {}).get('name'),
    'metadata.namespace': lambda obj: obj.get('metadata', {}).get('namespace'),
}


def field_selector(selector: str | None) -> Predicate:
    """A predicate over a whole object for a field selector string."""
    if not selector:
        return lambda obj: True
    checks: list[Predicate] = []
    for term in _split_top_level(selector):
        eq = _EQ_RE.match(term)
        if not eq:
            raise SelectorError(f'invalid field selector: {term!r}')
        field, op, value = eq.groups()
        getter = _FIELDS.get(field)
        if getter is None:
            raise SelectorError(f'field label not supported: {field}')
        if op == '!=':
            checks.append(lambda obj, g=getter, v=value: g(obj) != v)
        else:
            checks.append(lambda obj, g=getter, v=value: g(obj) == v)
    return lambda obj: all(check(obj) for check in checks)
