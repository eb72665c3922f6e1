"""`ApiServer`: kmock's `KubernetesEmulator` with the object semantics kubectl and kube-rs rely on.

kmock provides the HTTP server (aiohttp on a loopback port the OS picks), request parsing, the
discovery documents (`/api`, `/apis`, `/apis/G`, `/apis/G/V`, `/version`) and the bundled list
of built-in resources (`ResourcesArray.load_bundled()`: kinds, scopes, short names,
subresources). kmock's own object handling is a merge-only in-memory dict with no versions; this
class replaces it for every resource URL (`/api/v1/...`, `/apis/G/V/...` with a resource name)
by the store below, and fixes the discovery details kubectl trips on.

Everything runs on one asyncio loop and no state change awaits, so each request's read-modify-
write is atomic without locks.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import datetime
import json
import random
import string
import sys
import uuid
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import apps, references

from . import fields
from .selectors import SelectorError, field_selector, label_selector

CRD_GR = ('apiextensions.k8s.io', 'customresourcedefinitions')
CRD_VERBS = {'create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'}
GroupResource = tuple[str, str]
ObjKey = tuple[str | None, str]


class ApiError(Exception):
    """An API error answered as a `Status` object, as the real API server does."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        """The `Status` body."""
        body: dict[str, Any] = {
            'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Failure',
            'message': self.message, 'reason': self.reason, 'code': self.code,
        }
        if self.details:
            body['details'] = self.details
        return body

    def response(self) -> aiohttp.web.Response:
        """The HTTP response carrying the `Status` body."""
        return aiohttp.web.json_response(self.status(), status=self.code)


@dataclasses.dataclass(frozen=True)
class Route:
    """A parsed resource URL."""
    group: str
    version: str
    plural: str
    namespace: str | None
    name: str | None
    subresource: str | None

    @property
    def group_version(self) -> str:
        return self.version if self.group == '' else f'{self.group}/{self.version}'


def parse_route(path: str) -> Route | None:
    """Parses `/api/v1/...` and `/apis/G/V/...`; None for discovery and other paths."""
    parts = [p for p in path.split('/') if p]
    if len(parts) >= 3 and parts[0] == 'api':
        group, version, rest = '', parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == 'apis':
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if rest[0] == 'namespaces' and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else None
    sub = '/'.join(rest[2:]) or None
    return Route(group, version, plural, namespace, name, sub)


@dataclasses.dataclass
class Event:
    """One change, kept in the history that watches resume from."""
    rv: int
    gr: GroupResource
    type: str
    obj: dict[str, Any]
    old: dict[str, Any] | None


@dataclasses.dataclass
class ManagedEntry:
    """One `managedFields` entry: what a manager owns, and how it last wrote it."""
    paths: set[fields.Path]
    api_version: str
    time: str


Managers = dict[tuple[str, str, str], ManagedEntry]  # (manager, operation, subresource)


class Watch:
    """One open watch stream: its filters and its queue of events."""

    def __init__(self, gr: GroupResource, namespace: str | None, labels: Any, flds: Any):
        self.gr, self.namespace, self.labels, self.fields = gr, namespace, labels, flds
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def visible(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get('metadata', {})
        if self.namespace is not None and meta.get('namespace') != self.namespace:
            return False
        return bool(self.labels(meta.get('labels') or {}) and self.fields(obj))

    def translate(self, ev: Event) -> str | None:
        """The event type this watcher sees: a label change can turn MODIFIED into ADDED or
        DELETED, as on a real API server."""
        now = self.visible(ev.obj)
        if ev.type != 'MODIFIED':
            return ev.type if now else None
        before = self.visible(ev.old)
        if now and before:
            return 'MODIFIED'
        if now:
            return 'ADDED'
        return 'DELETED' if before else None


def now_rfc3339() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')


def present(obj: dict[str, Any], api_version: str, meta_only: bool = False) -> dict[str, Any]:
    """The object as served at `api_version` (no conversion: only `apiVersion` changes), or as
    a `PartialObjectMetadata` when the client asked for metadata only."""
    if meta_only:
        return {'kind': 'PartialObjectMetadata', 'apiVersion': 'meta.k8s.io/v1', 'metadata': obj['metadata']}
    return obj if obj.get('apiVersion') == api_version else {**obj, 'apiVersion': api_version}


def wants_metadata_only(request: kmock.Request) -> bool:
    """Whether the Accept header asks for `PartialObjectMetadata[List]` (kube-rs's
    `metadata_watcher`, `kubectl get -o name` and the like)."""
    accept = next((v for k, v in request.headers.items() if k.lower() == 'accept'), '')
    first = accept.split(',')[0]
    return 'as=PartialObjectMetadata' in first


def apply_defaults(value: Any, schema: dict[str, Any]) -> None:
    """Structural-schema defaulting (`default:` in the CRD's openAPIV3Schema), in place."""
    if isinstance(value, dict):
        for key, sub in (schema.get('properties') or {}).items():
            if key not in value and isinstance(sub, dict) and 'default' in sub:
                value[key] = fields.clone(sub['default'])
            if key in value and isinstance(sub, dict):
                apply_defaults(value[key], sub)
        extra = schema.get('additionalProperties')
        if isinstance(extra, dict):
            for child in value.values():
                apply_defaults(child, extra)
    elif isinstance(value, list) and isinstance(schema.get('items'), dict):
        for child in value:
            apply_defaults(child, schema['items'])


def fold_string_data(gr: GroupResource, obj: dict[str, Any]) -> None:
    """A Secret's `stringData` is written into `data` (base64) and dropped, as the API server does."""
    if gr == ('', 'secrets') and isinstance(obj.get('stringData'), dict):
        data = obj.setdefault('data', {}) or {}
        for key, value in obj.pop('stringData').items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj['data'] = data


def _version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes' version order: GA > beta > alpha, then by number (v2 > v1)."""
    import re
    m = re.fullmatch(r'v(\d+)(?:(alpha|beta)(\d+))?', version)
    if not m:
        return (-1, 0, 0)
    stage = {'alpha': 0, 'beta': 1, None: 2}[m.group(2)]
    return (stage, int(m.group(1)), int(m.group(3) or 0))


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    """A Kubernetes API emulator good enough for kubectl and kube-rs controllers."""

    bookmark_interval: float = 5.0  # seconds between BOOKMARK events on idle watches
    history_limit: int = 100_000  # events kept for watches that resume from a resourceVersion
    log_requests: bool = False
    request_log: str | None = None  # append one JSON line per request (method, path, query, agent, status)

    _rv: int = attrs.field(default=0, init=False)
    _store: dict[GroupResource, dict[ObjKey, dict[str, Any]]] = attrs.field(factory=dict, init=False)
    _managed: dict[str, Managers] = attrs.field(factory=dict, init=False)  # by uid
    _uids: dict[str, tuple[GroupResource, ObjKey]] = attrs.field(factory=dict, init=False)
    _history: collections.deque[Event] = attrs.field(init=False)
    _watches: dict[GroupResource, set[Watch]] = attrs.field(factory=dict, init=False)
    _schemas: dict[tuple[str, str, str], dict[str, Any]] = attrs.field(factory=dict, init=False)

    @_history.default
    def _history_default(self) -> collections.deque[Event]:
        return collections.deque(maxlen=self.history_limit)

    # ---------------------------------------------------------------- routing

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # kmock keeps every request for assertions; a long scale run must not grow without bound.
        if len(self._requests) > 1000:
            del self._requests[:-100]
        route = parse_route(request.url.path)
        if route is None:
            # Discovery, /version and the 404 fallback stay kmock's (with the fixes below).
            # kmock.KubernetesEmulator._handle would also try to mutate its own store; skip it.
            response = await apps.RawHandler._handle(self, request)
        else:
            try:
                response = await self._serve(request, route)
            except ApiError as e:
                response = e.response()
            except SelectorError as e:
                response = ApiError(400, 'BadRequest', str(e)).response()
        if self.log_requests:
            print(f'kube-emulator: {request.method.value} {request.url.path_qs} -> {response.status}',
                  file=sys.stderr, flush=True)
        if self.request_log:
            raw = request._raw_request
            line = {'method': request.method.value, 'path': request.url.path,
                    'query': dict(request.params), 'status': response.status,
                    'agent': raw.headers.get('User-Agent', '') if raw is not None else ''}
            with open(self.request_log, 'a', encoding='utf-8') as f:
                f.write(json.dumps(line) + '\n')
        return response

    async def _serve(self, request: kmock.Request, route: Route) -> aiohttp.web.StreamResponse:
        res = references.resource(route.group, route.version, route.plural)
        if res not in self._resources:
            raise ApiError(404, 'NotFound', 'the server could not find the requested resource')
        info = self._resources[res]
        if route.subresource not in (None, 'status') or (
                route.subresource == 'status' and 'status' not in info.subresources):
            raise ApiError(404, 'NotFound', 'the server could not find the requested resource')
        if not info.namespaced and route.namespace is not None:
            raise ApiError(404, 'NotFound', 'the server could not find the requested resource')
        method = request.method.value
        params = dict(request.params)
        if method == 'GET' and params.get('watch') in ('true', '1'):
            return await self._watch(request, route, info, params)
        if method == 'GET' and route.name is None:
            listed = self._list(route, info, params)
            if wants_metadata_only(request):
                listed = {'kind': 'PartialObjectMetadataList', 'apiVersion': 'meta.k8s.io/v1',
                          'metadata': listed['metadata'],
                          'items': [present(o, '', True) for o in listed['items']]}
            return self._json(listed)
        if method == 'GET':
            return self._json(present(self._get(route), route.group_version, wants_metadata_only(request)))
        if method == 'DELETE' and route.name is None:
            return self._json(self._delete_collection(route, info, params))
        body = request.data
        if method == 'DELETE':
            return self._json(self._delete(route, body if isinstance(body, dict) else {}, params))
        if method == 'POST' and route.name is None:
            if not isinstance(body, dict):
                raise ApiError(400, 'BadRequest', 'the body must be a JSON object')
            if info.namespaced and route.namespace is None:
                raise ApiError(404, 'NotFound', 'the server could not find the requested resource')
            obj = self._create(route, info, body, self._manager(request, params), 'Update', params)
            return self._json(obj, status=201)
        if method == 'PUT' and route.name is not None:
            if not isinstance(body, dict):
                raise ApiError(400, 'BadRequest', 'the body must be a JSON object')
            return self._json(self._replace(route, info, body, self._manager(request, params), params))
        if method == 'PATCH' and route.name is not None:
            content_type = request._raw_request.content_type if request._raw_request else ''
            return await self._patch(request, route, info, body, content_type, params)
        raise ApiError(405, 'MethodNotAllowed', f'{method} is not supported on {request.url.path}')

    @staticmethod
    def _json(body: Any, status: int = 200) -> aiohttp.web.Response:
        return aiohttp.web.Response(body=json.dumps(body, separators=(',', ':')).encode(),
                                    status=status, content_type='application/json')

    @staticmethod
    def _manager(request: kmock.Request, params: dict[str, str]) -> str:
        """The field manager: `?fieldManager=`, else the client's name from its User-Agent."""
        if params.get('fieldManager'):
            return params['fieldManager']
        agent = next((v for k, v in request.headers.items() if k.lower() == 'user-agent'), '')
        return agent.split('/')[0] or 'unknown'

    # ---------------------------------------------------------------- discovery fixes

    async def _serve_version(self, request: kmock.Request) -> Any:
        doc = await super()._serve_version(request)
        if isinstance(doc, dict) and request.resource is not None and request.resource.group == '':
            doc['groupVersion'] = request.resource.version  # kmock says "/v1"; kubectl needs "v1"
        for entry in doc.get('resources', []) if isinstance(doc, dict) else []:
            entry['verbs'] = sorted(entry.get('verbs') or [])
            if '/' in entry['name']:
                # kmock copies the parent's short names onto subresources; kubectl then warns
                # that "pch" could also mean "pushchannels/status".
                entry['shortNames'], entry['categories'] = [], []
            if entry.get('namespaced') is None:
                entry['namespaced'] = False
        return doc

    async def _serve_server_version(self, request: kmock.Request) -> Any:
        doc = await super()._serve_server_version(request)
        # kmock answers 1.26; claim the version the workspace's k8s-openapi targets, so kubectl
        # does not warn about version skew.
        doc.update({'major': '1', 'minor': '33', 'gitVersion': 'v1.33.0+kube-emulator'})
        return doc

    async def _serve_apis(self, request: kmock.Request) -> Any:
        doc = await super()._serve_apis(request)
        for group in doc.get('groups', []):
            self._order_versions(group)
        doc['groups'].sort(key=lambda g: g['name'])
        return doc

    async def _serve_group(self, request: kmock.Request) -> Any:
        doc = await super()._serve_group(request)
        if isinstance(doc, dict):
            self._order_versions(doc)
        return doc

    @staticmethod
    def _order_versions(group: dict[str, Any]) -> None:
        """kmock picks a preferred version from a set (random order); Kubernetes prefers the
        highest-priority version."""
        group['versions'].sort(key=lambda v: _version_priority(v['version']), reverse=True)
        group['preferredVersion'] = dict(group['versions'][0])

    # ---------------------------------------------------------------- reads

    def _objs_of(self, route: Route) -> dict[ObjKey, dict[str, Any]]:
        return self._store.get((route.group, route.plural), {})

    def _get(self, route: Route) -> dict[str, Any]:
        assert route.name is not None
        obj = self._objs_of(route).get((route.namespace, route.name))
        if obj is None:
            raise self._not_found(route)
        return obj

    @staticmethod
    def _not_found(route: Route) -> ApiError:
        return ApiError(404, 'NotFound', f'{route.plural}.{route.group} "{route.name}" not found'
                        if route.group else f'{route.plural} "{route.name}" not found',
                        {'name': route.name, 'group': route.group, 'kind': route.plural})

    def _list(self, route: Route, info: Any, params: dict[str, str]) -> dict[str, Any]:
        # `limit`/`continue` are ignored: everything comes in one page without a continue token.
        watch = Watch((route.group, route.plural), route.namespace,
                      label_selector(params.get('labelSelector')),
                      field_selector(params.get('fieldSelector')))
        items = [present(obj, route.group_version)
                 for _, obj in sorted(self._objs_of(route).items(), key=lambda kv: (kv[0][0] or '', kv[0][1]))
                 if watch.visible(obj)]
        return {'kind': f'{info.kind}List', 'apiVersion': route.group_version,
                'metadata': {'resourceVersion': str(self._rv)}, 'items': items}

    # ---------------------------------------------------------------- writes

    def _commit(self, gr: GroupResource, key: ObjKey, obj: dict[str, Any], old: dict[str, Any] | None,
                event_type: str, managers: Managers | None) -> dict[str, Any]:
        """Stores a new version (or removes the object) and tells the watches."""
        self._rv += 1
        meta = obj['metadata']
        meta['resourceVersion'] = str(self._rv)
        uid = meta['uid']
        if event_type == 'DELETED':
            self._store.get(gr, {}).pop(key, None)
            self._managed.pop(uid, None)
            self._uids.pop(uid, None)
        else:
            if managers is not None:
                self._managed[uid] = managers
                meta['managedFields'] = self._render_managers(managers)
            self._store.setdefault(gr, {})[key] = obj
            self._uids[uid] = (gr, key)
        ev = Event(self._rv, gr, event_type, obj, old)
        self._history.append(ev)
        for watch in self._watches.get(gr, ()):
            watch.queue.put_nowait(ev)
        return obj

    @staticmethod
    def _render_managers(managers: Managers) -> list[dict[str, Any]]:
        out = []
        for (manager, operation, sub), entry in sorted(managers.items()):
            item = {'manager': manager, 'operation': operation, 'apiVersion': entry.api_version,
                    'time': entry.time, 'fieldsType': 'FieldsV1',
                    'fieldsV1': fields.render_fields_v1(entry.paths)}
            if sub:
                item['subresource'] = sub
            out.append(item)
        return out

    def _schema_defaults(self, route: Route, obj: dict[str, Any]) -> None:
        schema = self._schemas.get((route.group, route.version, route.plural))
        if schema:
            apply_defaults(obj, schema)

    def _create(self, route: Route, info: Any, body: dict[str, Any], manager: str, operation: str,
                params: dict[str, str]) -> dict[str, Any]:
        obj = fields.clone(body)
        meta = obj.setdefault('metadata', {})
        if not isinstance(meta, dict):
            raise ApiError(400, 'BadRequest', 'metadata must be an object')
        if not meta.get('name') and meta.get('generateName'):
            suffix = ''.join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta['name'] = meta['generateName'] + suffix
        name = route.name or meta.get('name')
        if not name:
            raise ApiError(422, 'Invalid', 'metadata.name: Required value: name or generateName is required')
        if meta.get('name', name) != name:
            raise ApiError(400, 'BadRequest', 'the name of the object does not match the name on the URL')
        meta['name'] = name
        if info.namespaced:
            if meta.get('namespace') not in (None, route.namespace):
                raise ApiError(400, 'BadRequest', 'the namespace of the provided object does not match '
                               'the namespace sent on the request')
            meta['namespace'] = route.namespace
        else:
            meta.pop('namespace', None)
        gr, key = (route.group, route.plural), (meta.get('namespace'), name)
        if key in self._store.get(gr, {}):
            raise ApiError(409, 'AlreadyExists', f'{route.plural} "{name}" already exists',
                           {'name': name, 'group': route.group, 'kind': route.plural})
        has_status = 'status' in info.subresources
        if has_status:
            obj.pop('status', None)
        for k in ('resourceVersion', 'deletionTimestamp', 'deletionGracePeriodSeconds', 'managedFields',
                  'selfLink'):
            meta.pop(k, None)
        meta['uid'] = str(uuid.uuid4())
        meta['creationTimestamp'] = now_rfc3339()
        meta['generation'] = 1
        obj['apiVersion'] = route.group_version
        obj['kind'] = info.kind
        self._schema_defaults(route, obj)
        fold_string_data(gr, obj)
        paths = fields.leaf_paths(body, include_status=not has_status)
        managers: Managers = {(manager, operation, ''): ManagedEntry(paths, route.group_version, now_rfc3339())}
        if params.get('dryRun'):
            return obj
        self._commit(gr, key, obj, None, 'ADDED', managers)
        if gr == CRD_GR:
            obj = self._crd_established(obj)
        return obj

    def _replace(self, route: Route, info: Any, body: dict[str, Any], manager: str,
                 params: dict[str, str]) -> dict[str, Any]:
        current = self._get(route)
        return self._update(route, info, current, body, manager, 'Update', params, managers=None)

    async def _patch(self, request: kmock.Request, route: Route, info: Any, body: Any, content_type: str,
                     params: dict[str, str]) -> aiohttp.web.Response:
        manager = self._manager(request, params)
        if content_type == 'application/apply-patch+yaml':
            if not isinstance(body, dict):
                raise ApiError(415, 'UnsupportedMediaType', 'the emulator reads apply patches in JSON only')
            if not params.get('fieldManager'):
                raise ApiError(422, 'Invalid', 'fieldManager is required for apply requests')
            return self._json(self._apply(route, info, body, params['fieldManager'], params))
        current = self._get(route)
        if content_type == 'application/json-patch+json':
            try:
                candidate = jsonpatch.apply_patch(fields.clone(current), body)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as e:
                raise ApiError(422, 'Invalid', f'the JSON patch cannot be applied: {e}') from e
        elif content_type == 'application/merge-patch+json':
            candidate = fields.merge_patch(current, body)
        elif content_type == 'application/strategic-merge-patch+json':
            if (route.group, route.plural) in self._crd_resources():
                raise ApiError(415, 'UnsupportedMediaType',
                               'strategic merge patch is not supported for custom resources')
            candidate = fields.strategic_merge_patch(current, body)
        else:
            raise ApiError(415, 'UnsupportedMediaType', f'the body of type {content_type!r} is not supported')
        if not isinstance(candidate, dict):
            raise ApiError(422, 'Invalid', 'the patch leaves no object')
        return self._json(self._update(route, info, current, candidate, manager, 'Update', params, None))

    def _crd_resources(self) -> set[GroupResource]:
        out = set()
        for crd in self._store.get(CRD_GR, {}).values():
            spec = crd.get('spec', {})
            out.add((spec.get('group', ''), spec.get('names', {}).get('plural', '')))
        return out

    def _apply(self, route: Route, info: Any, applied: dict[str, Any], manager: str,
               params: dict[str, str]) -> dict[str, Any]:
        """Server-side apply, approximated (see fields.py)."""
        sub = route.subresource or ''
        has_status = 'status' in info.subresources
        meta = applied.get('metadata') or {}
        if meta.get('name') not in (None, route.name):
            raise ApiError(400, 'BadRequest', 'the name of the object does not match the name on the URL')
        current = self._objs_of(route).get((route.namespace, route.name or ''))
        if current is None:
            if sub:
                raise self._not_found(route)
            return self._create(route, info, applied, manager, 'Apply', params)
        only_status = sub == 'status'
        new_paths = fields.leaf_paths(applied, include_status=not has_status, only_status=only_status)
        managers = {k: ManagedEntry(set(e.paths), e.api_version, e.time)
                    for k, e in self._managed.get(current['metadata']['uid'], {}).items()}
        me = (manager, 'Apply', sub)
        force = params.get('force') in ('true', '1')
        conflicts = []
        for other, entry in managers.items():
            if other == me:
                continue
            for path in new_paths & entry.paths:
                if fields.get_path(current, path) != fields.get_path(applied, path):
                    conflicts.append((other[0], path))
        if conflicts and not force:
            shown = '\n'.join(f'- conflict with "{m}": .{".".join(p)}' for m, p in sorted(conflicts))
            raise ApiError(409, 'Conflict', f'Apply failed with {len(conflicts)} conflict(s):\n{shown}',
                           {'causes': [{'reason': 'FieldManagerConflict', 'message': f'conflict with "{m}"',
                                        'field': '.' + '.'.join(p)} for m, p in sorted(conflicts)]})
        for other, entry in managers.items():
            if other != me:
                entry.paths -= new_paths
        live = fields.clone(current)  # delete_path below edits in place; history keeps `current`
        if only_status:
            candidate = fields.deep_merge(live, {'status': applied.get('status') or {}})
        else:
            candidate = fields.deep_merge(live, {k: v for k, v in applied.items() if k != 'status'})
            meta_applied = applied.get('metadata') or {}
            candidate['metadata'] = fields.deep_merge(
                live['metadata'], {k: v for k, v in meta_applied.items() if k in fields._OWNED_METADATA})
        old_paths = managers[me].paths if me in managers else set()
        still_owned = set().union(*(e.paths for k, e in managers.items() if k != me)) if managers else set()
        for path in old_paths - new_paths:
            if not any(p[:len(path)] == path or path[:len(p)] == p for p in still_owned | new_paths):
                fields.delete_path(candidate, path)
        managers[me] = ManagedEntry(new_paths, route.group_version, now_rfc3339())
        managers = {k: e for k, e in managers.items() if e.paths}
        if 'resourceVersion' in meta:
            candidate['metadata']['resourceVersion'] = meta['resourceVersion']
        else:
            candidate['metadata'].pop('resourceVersion', None)
        return self._update(route, info, current, candidate, manager, 'Apply', params, managers)

    def _update(self, route: Route, info: Any, current: dict[str, Any], candidate: dict[str, Any],
                manager: str, operation: str, params: dict[str, str], managers: Managers | None) -> dict[str, Any]:
        """Writes `candidate` over `current`: preconditions, server-owned fields, generation,
        status-subresource rules, field ownership for non-apply writes."""
        sub = route.subresource or ''
        has_status = 'status' in info.subresources
        cmeta = current['metadata']
        nmeta_in = candidate.get('metadata') or {}
        if nmeta_in.get('name', route.name) != route.name:
            raise ApiError(400, 'BadRequest', 'the name of the object does not match the name on the URL')
        want_rv = nmeta_in.get('resourceVersion')
        if want_rv and want_rv != cmeta['resourceVersion']:
            raise ApiError(409, 'Conflict', f'Operation cannot be fulfilled on {route.plural} "{route.name}": '
                           'the object has been modified; please apply your changes to the latest version '
                           'and try again', {'name': route.name, 'group': route.group, 'kind': route.plural})
        if sub == 'status':
            new = fields.clone(current)
            if 'status' in candidate:
                new['status'] = fields.clone(candidate['status'])
            else:
                new.pop('status', None)
        else:
            new = fields.clone(candidate)
            if has_status:
                if 'status' in current:
                    new['status'] = fields.clone(current['status'])
                else:
                    new.pop('status', None)
        meta = new.setdefault('metadata', {})
        for k in ('name', 'namespace', 'uid', 'creationTimestamp', 'generation', 'deletionTimestamp',
                  'deletionGracePeriodSeconds'):
            if k in cmeta:
                meta[k] = cmeta[k]
            else:
                meta.pop(k, None)
        if sub == 'status':
            for k in fields._OWNED_METADATA:
                if k in cmeta:
                    meta[k] = fields.clone(cmeta[k])
                else:
                    meta.pop(k, None)
        meta.pop('managedFields', None)
        meta['resourceVersion'] = cmeta['resourceVersion']
        new['apiVersion'] = route.group_version
        new['kind'] = info.kind
        self._schema_defaults(route, new)
        fold_string_data((route.group, route.plural), new)

        def body_of(o: dict[str, Any]) -> dict[str, Any]:
            skip = {'metadata', 'apiVersion', 'kind'} | ({'status'} if has_status else set())
            return {k: v for k, v in o.items() if k not in skip}

        if body_of(new) != body_of(current):
            meta['generation'] = cmeta.get('generation', 1) + 1
        if managers is None:
            changed, removed = fields.changed_paths(current, new, include_status=not has_status,
                                                    only_status=sub == 'status')
            managers = {k: ManagedEntry(set(e.paths) - changed - removed, e.api_version, e.time)
                        for k, e in self._managed.get(cmeta['uid'], {}).items()}
            if changed:
                me = (manager, operation, sub)
                entry = managers.get(me) or ManagedEntry(set(), route.group_version, now_rfc3339())
                entry.paths |= changed
                entry.time = now_rfc3339()
                managers[me] = entry
            managers = {k: e for k, e in managers.items() if e.paths}
        unchanged = {**new, 'metadata': {**meta, 'managedFields': None}} == {
            **current, 'metadata': {**cmeta, 'managedFields': None}}
        if params.get('dryRun'):
            return new
        if unchanged and managers.keys() == self._managed.get(cmeta['uid'], {}).keys():
            return current  # a no-op write keeps the resourceVersion, as on a real API server
        gr, key = (route.group, route.plural), (cmeta.get('namespace'), route.name or '')
        obj = self._commit(gr, key, new, current, 'MODIFIED', managers)
        if meta.get('deletionTimestamp') and not meta.get('finalizers'):
            self._remove(gr, key, 'Background')
        elif gr == CRD_GR:
            obj = self._crd_established(obj)
        return obj

    # ---------------------------------------------------------------- deletion and GC

    def _delete(self, route: Route, options: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        current = self._get(route)
        pre = options.get('preconditions') or {}
        meta = current['metadata']
        if pre.get('uid') not in (None, meta['uid']) or pre.get('resourceVersion') not in (
                None, meta['resourceVersion']):
            raise ApiError(409, 'Conflict', f'Precondition failed for {route.plural} "{route.name}"')
        policy = options.get('propagationPolicy') or params.get('propagationPolicy') or 'Background'
        if options.get('orphanDependents') is True:
            policy = 'Orphan'
        if params.get('dryRun'):
            return current
        return self._delete_object((route.group, route.plural), (route.namespace, route.name or ''), policy)

    def _delete_collection(self, route: Route, info: Any, params: dict[str, str]) -> dict[str, Any]:
        listed = self._list(route, info, params)
        for item in listed['items']:
            meta = item['metadata']
            self._delete_object((route.group, route.plural), (meta.get('namespace'), meta['name']),
                                params.get('propagationPolicy') or 'Background')
        return listed

    def _delete_object(self, gr: GroupResource, key: ObjKey, policy: str) -> dict[str, Any]:
        """Deletes now, or marks for deletion while finalizers remain."""
        current = self._store[gr][key]
        if current['metadata'].get('finalizers'):
            if current['metadata'].get('deletionTimestamp'):
                return current
            new = fields.clone(current)
            new['metadata']['deletionTimestamp'] = now_rfc3339()
            new['metadata']['deletionGracePeriodSeconds'] = 0
            return self._commit(gr, key, new, current, 'MODIFIED', self._managed.get(current['metadata']['uid']))
        return self._remove(gr, key, policy)

    def _remove(self, gr: GroupResource, key: ObjKey, policy: str) -> dict[str, Any]:
        current = self._store[gr][key]
        final = fields.clone(current)
        self._commit(gr, key, final, current, 'DELETED', None)
        self._collect_dependents(final['metadata']['uid'], policy)
        if gr == CRD_GR:
            self._crd_removed(final)
        return final

    def _collect_dependents(self, owner_uid: str, policy: str) -> None:
        """The garbage collector, run synchronously: dependents whose owners are all gone are
        deleted (background propagation; foreground is treated alike), or orphaned on request."""
        for gr, objects in list(self._store.items()):
            for key, obj in list(objects.items()):
                refs = obj['metadata'].get('ownerReferences') or []
                if not any(r.get('uid') == owner_uid for r in refs):
                    continue
                if key not in objects:
                    continue  # removed meanwhile by a nested collection
                if policy == 'Orphan':
                    new = fields.clone(obj)
                    new['metadata']['ownerReferences'] = [r for r in refs if r.get('uid') != owner_uid]
                    if not new['metadata']['ownerReferences']:
                        del new['metadata']['ownerReferences']
                    self._commit(gr, key, new, obj, 'MODIFIED', self._managed.get(obj['metadata']['uid']))
                elif not any(r.get('uid') in self._uids for r in refs if r.get('uid') != owner_uid):
                    self._delete_object(gr, key, 'Background')

    # ---------------------------------------------------------------- CRDs

    def _crd_established(self, crd: dict[str, Any]) -> dict[str, Any]:
        """Registers the CRD's resources for discovery and serving, and marks it Established
        (what the real apiextensions controllers do, here at once)."""
        spec = crd.get('spec') or {}
        group, names = spec.get('group', ''), spec.get('names') or {}
        plural = names.get('plural')
        if not group or not plural:
            return crd
        for res in [r for r in self._resources if r.group == group and r.plural == plural]:
            del self._resources[res]
        for version in spec.get('versions') or []:
            if not version.get('served', True):
                continue
            res = references.resource(group, version['name'], plural)
            self._resources[res] = references.ResourceInfo(
                namespaced=spec.get('scope') == 'Namespaced', kind=names.get('kind'),
                singular=names.get('singular') or plural, verbs=CRD_VERBS,
                shortnames=set(names.get('shortNames') or []), categories=set(names.get('categories') or []),
                subresources={'status'} if (version.get('subresources') or {}).get('status') is not None else set())
            schema = (version.get('schema') or {}).get('openAPIV3Schema')
            if isinstance(schema, dict):
                self._schemas[(group, version['name'], plural)] = schema
        status = {
            'acceptedNames': names,
            'storedVersions': [v['name'] for v in spec.get('versions') or [] if v.get('storage')],
            'conditions': [
                {'type': t, 'status': 'True', 'reason': r, 'message': m, 'lastTransitionTime': now_rfc3339()}
                for t, r, m in (('NamesAccepted', 'NoConflicts', 'no conflicts found'),
                                ('Established', 'InitialNamesAccepted', 'the initial names have been accepted'))
            ],
        }
        old = crd.get('status') or {}
        if old.get('acceptedNames') == status['acceptedNames'] and old.get('storedVersions') == status['storedVersions']:
            return crd
        new = fields.clone(crd)
        new['status'] = status
        key = (None, crd['metadata']['name'])
        return self._commit(CRD_GR, key, new, crd, 'MODIFIED', self._managed.get(crd['metadata']['uid']))

    def _crd_removed(self, crd: dict[str, Any]) -> None:
        spec = crd.get('spec') or {}
        group, plural = spec.get('group', ''), (spec.get('names') or {}).get('plural', '')
        for res in [r for r in self._resources if r.group == group and r.plural == plural]:
            del self._resources[res]
            self._schemas.pop((res.group, res.version, res.plural), None)
        for key in list(self._store.get((group, plural), {})):
            self._remove((group, plural), key, 'Background')

    # ---------------------------------------------------------------- watch

    async def _watch(self, request: kmock.Request, route: Route, info: Any,
                     params: dict[str, str]) -> aiohttp.web.StreamResponse:
        gr = (route.group, route.plural)
        flds = field_selector(params.get('fieldSelector'))
        if route.name is not None:
            name_only = route.name
            base = flds
            flds = lambda obj: base(obj) and obj.get('metadata', {}).get('name') == name_only  # noqa: E731
        watch = Watch(gr, route.namespace, label_selector(params.get('labelSelector')), flds)
        try:
            timeout = float(params.get('timeoutSeconds') or 1800)
        except ValueError as e:
            raise ApiError(400, 'BadRequest', 'timeoutSeconds must be a number') from e
        bookmarks = params.get('allowWatchBookmarks') in ('true', '1')
        send_initial = params.get('sendInitialEvents') in ('true', '1')
        rv = params.get('resourceVersion') or ''
        meta_only = wants_metadata_only(request)
        gone: str | None = None
        initial: list[tuple[str, dict[str, Any]]] = []
        # Everything up to the registration below is synchronous: no event can fall in between.
        if send_initial or rv in ('', '0'):
            for _, obj in sorted(self._store.get(gr, {}).items(), key=lambda kv: int(kv[1]['metadata']['resourceVersion'])):
                if watch.visible(obj):
                    initial.append(('ADDED', obj))
        else:
            try:
                since = int(rv)
            except ValueError as e:
                raise ApiError(400, 'BadRequest', f'invalid resourceVersion {rv!r}') from e
            oldest = self._history[0].rv if self._history else self._rv + 1
            if since < oldest - 1 and since < self._rv:
                gone = f'too old resource version: {since} ({oldest - 1})'
            else:
                for ev in self._history:
                    if ev.rv > since and ev.gr == gr:
                        kind = watch.translate(ev)
                        if kind:
                            initial.append((kind, ev.obj))
        self._watches.setdefault(gr, set()).add(watch)
        raw = request._raw_request
        assert raw is not None
        response = aiohttp.web.StreamResponse(status=200, headers={'Content-Type': 'application/json'})
        response.enable_chunked_encoding()
        try:
            await response.prepare(raw)
            if gone is not None:
                err = ApiError(410, 'Expired', gone).status()
                await response.write(self._line('ERROR', err))
                return response
            chunk = b''.join(self._line(t, present(o, route.group_version, meta_only)) for t, o in initial)
            if send_initial:
                chunk += self._bookmark(route, info, initial_end=True)
            if chunk:
                await response.write(chunk)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while (remaining := deadline - loop.time()) > 0:
                try:
                    ev = await asyncio.wait_for(watch.queue.get(), min(remaining, self.bookmark_interval))
                except TimeoutError:
                    if bookmarks and remaining > self.bookmark_interval:
                        await response.write(self._bookmark(route, info))
                    continue
                events = [ev]
                while not watch.queue.empty():
                    events.append(watch.queue.get_nowait())
                lines = []
                for ev in events:
                    kind = watch.translate(ev)
                    if kind:
                        lines.append(self._line(kind, present(ev.obj, route.group_version, meta_only)))
                if lines:
                    await response.write(b''.join(lines))
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            return response
        finally:
            self._watches.get(gr, set()).discard(watch)
        try:
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass
        return response

    @staticmethod
    def _line(event_type: str, obj: dict[str, Any]) -> bytes:
        return json.dumps({'type': event_type, 'object': obj}, separators=(',', ':')).encode() + b'\n'

    def _bookmark(self, route: Route, info: Any, initial_end: bool = False) -> bytes:
        meta: dict[str, Any] = {'resourceVersion': str(self._rv)}
        if initial_end:
            meta['annotations'] = {'k8s.io/initial-events-end': 'true'}
        return self._line('BOOKMARK', {'kind': info.kind, 'apiVersion': route.group_version, 'metadata': meta})
