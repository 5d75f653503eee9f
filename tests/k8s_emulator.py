"""A Kubernetes API emulator for the operator's integration tests.

kmock 0.8's KubernetesEmulator plus the API-server semantics that kube-runtime and kubectl rely
on (why and what it lacks: docs/emulators.md, kmock and the shim):

- uid, resourceVersion, creationTimestamp and generation on create; a resourceVersion bump on
  every write (the watcher needs one on every event); generation bumps on spec changes only;
- PUT (replace), with 409 on a stale resourceVersion;
- ``reason: NotFound`` / ``AlreadyExists`` (kube's ``Status::is_not_found()`` reads the reason);
- JSON patch ``test`` of a missing member against ``null`` succeeds (kube-runtime's finalizer
  helper relies on it, as the real apiserver allows);
- ``/status`` isolation for resources with a status subresource;
- list responses with kind/apiVersion and a numeric resourceVersion; equality label selectors;
- TokenReview answered from a token table (``--tokens FILE``: JSON ``{token: {"username",
  "audiences"}}``), and for ``kmock.secret.NAME`` from the Secret ``kmock-tokens/NAME``
  (revoked by deleting it);
- Namespace objects (``/api/v1/namespaces[/NAME]``: create, get, list), which kmock's path
  parser cannot address, so tests can label namespaces (``audit.scailabs.ai/tenant``).

Server-side apply is still a merge patch here (no managedFields): assert SSA request shapes in
the tower-test unit tests instead. Uses kmock internals: pin kmock==0.8 (scripts/kmock.sh).

Usage: python tests/k8s_emulator.py PORT [--tokens FILE]
"""
import argparse
import asyncio
import base64
import datetime
import itertools
import json
import signal
import uuid

import aiohttp.web
import kmock
from kmock import ResourceInfo
from kmock._internal import enums

VERBS = ['get', 'list', 'watch', 'create', 'update', 'patch', 'delete']
# plural -> (group/version, kind, namespaced, subresources, short names)
RESOURCES = {
    'auditexports': ('audit.scailabs.ai/v1alpha1', 'AuditExport', True, ['status'], ['aex']),
    'leases': ('coordination.k8s.io/v1', 'Lease', True, [], []),
    'events': ('events.k8s.io/v1', 'Event', True, [], []),
    'secrets': ('v1', 'Secret', True, [], []),
    'namespaces': ('v1', 'Namespace', False, [], ['ns']),
}
# Revocable tokens: `kmock.secret.NAME` is valid while the Secret kmock-tokens/NAME exists.
SECRET_TOKEN_PREFIX = 'kmock.secret.'
SECRET_TOKEN_NAMESPACE = 'kmock-tokens'
WITH_STATUS = {plural for plural, info in RESOURCES.items() if 'status' in info[3]}
_resource_versions = itertools.count(100)


def _missing(obj, path):
    current = obj
    for part in path.strip('/').split('/'):
        if not isinstance(current, dict) or part not in current:
            return True
        current = current[part]
    return False


def _token_key(token):
    """The token table key of a token: a JWT-shaped token whose payload names one
    (``{"iss": ..., "kmock_token": KEY}``, as tests/it/operator_kmock.rs builds them with the
    cluster's issuer) stands for KEY; any other token is its own key."""
    parts = token.split('.')
    if len(parts) == 3:
        try:
            payload = json.loads(base64.urlsafe_b64decode(parts[1] + '=' * (-len(parts[1]) % 4)))
        except ValueError:
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get('kmock_token'), str):
            return payload['kmock_token']
    return token


def _now():
    return datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')


def _labels_match(selector, labels):
    """Equality-based selectors only: k=v, k==v, k!=v, k, !k."""
    for term in filter(None, (t.strip() for t in selector.split(','))):
        if '!=' in term:
            key, value = term.split('!=', 1)
            ok = labels.get(key) != value
        elif '=' in term:
            key, value = term.replace('==', '=').split('=', 1)
            ok = labels.get(key) == value
        elif term.startswith('!'):
            ok = term[1:] not in labels
        else:
            ok = term in labels
        if not ok:
            return False
    return True


class ShimEmulator(kmock.KubernetesEmulator):
    tokens: dict = {}
    namespaces: dict = {}

    async def __call__(self, raw_request):
        parts = raw_request.path.strip('/').split('/')
        if parts[:3] == ['api', 'v1', 'namespaces'] and len(parts) <= 4:
            return await self._serve_namespace(raw_request, parts[3] if len(parts) == 4 else None)
        return await super().__call__(raw_request)

    async def _serve_namespace(self, raw_request, name):
        """Namespaces (cluster-scoped): kmock reads ``/api/v1/namespaces/X`` as namespace X."""
        def not_found():
            return aiohttp.web.json_response(
                {'kind': 'Status', 'apiVersion': 'v1', 'status': 'Failure', 'reason': 'NotFound',
                 'message': f'namespaces "{name}" not found', 'code': 404}, status=404)
        if raw_request.method == 'POST' and name is None:
            body = await raw_request.json()
            metadata = body.setdefault('metadata', {})
            if metadata.get('name') in self.namespaces:
                return aiohttp.web.json_response(
                    {'kind': 'Status', 'apiVersion': 'v1', 'status': 'Failure',
                     'reason': 'AlreadyExists', 'message': 'already exists', 'code': 409}, status=409)
            metadata.update(uid=str(uuid.uuid4()), resourceVersion=str(next(_resource_versions)),
                            creationTimestamp=_now())
            body.update(apiVersion='v1', kind='Namespace', status={'phase': 'Active'})
            self.namespaces[metadata['name']] = body
            return aiohttp.web.json_response(body, status=201)
        if raw_request.method == 'GET' and name is None:
            items = list(self.namespaces.values())
            selector = raw_request.query.get('labelSelector')
            if selector:
                items = [o for o in items if _labels_match(selector, o['metadata'].get('labels') or {})]
            return aiohttp.web.json_response(
                {'apiVersion': 'v1', 'kind': 'NamespaceList',
                 'metadata': {'resourceVersion': str(next(_resource_versions))}, 'items': items})
        if raw_request.method == 'GET':
            return aiohttp.web.json_response(self.namespaces[name]) if name in self.namespaces else not_found()
        return aiohttp.web.json_response(
            {'kind': 'Status', 'apiVersion': 'v1', 'status': 'Failure', 'reason': 'MethodNotAllowed',
             'message': f'{raw_request.method} on namespaces is not emulated', 'code': 405}, status=405)

    async def _render_error(self, exc):
        if isinstance(exc, kmock.KubernetesNotFoundError):
            exc = kmock.KubernetesNotFoundError(reason='NotFound', message=exc.message)
        elif type(exc).__name__ == 'KubernetesObjectConflictError':
            exc = kmock.KubernetesError(status=409, reason='AlreadyExists', message='already exists')
        return await super()._render_error(exc)

    async def _serve_list(self, request):
        result = await super()._serve_list(request)
        selector = request.params.get('labelSelector')
        if selector:
            result['items'] = [o for o in result['items']
                               if _labels_match(selector, o.get('metadata', {}).get('labels') or {})]
        info = RESOURCES.get(request.resource.plural)
        if info is not None:
            result['apiVersion'] = info[0]
            result['kind'] = info[1] + 'List'
        result['metadata'] = {'resourceVersion': str(next(_resource_versions))}
        return result

    async def _serve_version(self, request):
        result = await super()._serve_version(request)
        for resource in result.get('resources', []):
            if '/' in resource['name']:  # subresources have no short names of their own
                resource['shortNames'] = []
                resource['verbs'] = ['get', 'patch', 'update']
        return result

    def _stored(self, request):
        key = (request.resource, request.namespace, request.name)
        obj = self.objects[key] if key in self.objects else None
        return None if obj is None or obj.deleted else obj

    async def _handle(self, request):
        res = request.resource
        if res is not None and res.plural == 'tokenreviews' and request.method == 'POST':
            return self._token_review(request.data or {})
        rv = str(next(_resource_versions))
        if res is not None and request.action == enums.action.CREATE and isinstance(request.data, dict):
            self._on_create(request, rv)
        elif res is not None and request.name and request.method in ('PATCH', 'PUT'):
            self._on_write(request, rv)
        elif res is not None and request.action == enums.action.DELETE and request.name:
            stored = self._stored(request)
            if stored is not None and stored.get('metadata', {}).get('finalizers'):
                stored.patch({'metadata': {'resourceVersion': rv}})
        return await super()._handle(request)

    def _on_create(self, request, rv):
        metadata = request.data.setdefault('metadata', {})
        if request.namespace:
            metadata.setdefault('namespace', request.namespace)
        if not metadata.get('name') and metadata.get('generateName'):
            metadata['name'] = metadata['generateName'] + uuid.uuid4().hex[:5]
        metadata.update(uid=str(uuid.uuid4()), resourceVersion=rv, creationTimestamp=_now(), generation=1)
        if request.resource.plural in WITH_STATUS:
            request.data.pop('status', None)
        if request.resource.plural == 'secrets' and 'stringData' in request.data:
            data = request.data.setdefault('data', {})
            for key, value in request.data.pop('stringData').items():
                data[key] = base64.b64encode(value.encode()).decode()

    def _on_write(self, request, rv):
        stored = self._stored(request)
        if stored is None:
            raise kmock.KubernetesObjectNotFoundError()
        current = dict(stored.raw)
        plural = request.resource.plural
        if request.method == 'PUT':
            patch = self._replace_patch(request, current)
        elif isinstance(request.data, list):
            # JSON patch; the apiserver accepts `test null` on a missing member.
            patch = [op for op in request.data
                     if not (op.get('op') == 'test' and op.get('value') is None
                             and _missing(current, op.get('path', '')))]
            if plural in WITH_STATUS:
                on_status = request.subresource == 'status'
                patch = [op for op in patch
                         if op.get('path', '').startswith('/status') == on_status
                         or op.get('path', '').startswith('/metadata')]
        else:
            # merge, strategic and server-side apply are all treated as a merge patch
            patch = dict(request.data or {})
            patch.pop('apiVersion', None)
            patch.pop('kind', None)
            if plural in WITH_STATUS:
                if request.subresource == 'status':
                    patch = {k: v for k, v in patch.items() if k == 'status'}
                else:
                    patch.pop('status', None)
        if isinstance(patch, list):
            spec_changed = any(op.get('path', '').startswith('/spec') for op in patch)
        else:
            spec_changed = 'spec' in patch and patch['spec'] != current.get('spec')
        generation = current.get('metadata', {}).get('generation', 1) + (1 if spec_changed else 0)
        if isinstance(patch, list):
            patch = patch + [{'op': 'add', 'path': '/metadata/resourceVersion', 'value': rv},
                             {'op': 'add', 'path': '/metadata/generation', 'value': generation}]
        else:
            patch['metadata'] = dict(patch.get('metadata') or {}, resourceVersion=rv, generation=generation)
        # kmock matches reactions by request identity: mutate the frozen attrs request in place.
        object.__setattr__(request, 'data', patch)
        object.__setattr__(request, 'action', enums.action.UPDATE)

    def _replace_patch(self, request, current):
        wanted = (request.data or {}).get('metadata', {}).get('resourceVersion')
        if wanted and wanted != current.get('metadata', {}).get('resourceVersion'):
            raise kmock.KubernetesError(status=409, reason='Conflict',
                                        message='the object has been modified; please apply your changes to the latest version and try again')
        new = dict(request.data)
        kept = ('uid', 'creationTimestamp', 'deletionTimestamp')
        new['metadata'] = dict(current.get('metadata', {}),
                               **{k: v for k, v in new.get('metadata', {}).items() if k not in kept})
        if request.resource.plural in WITH_STATUS:
            keep = 'spec' if request.subresource == 'status' else 'status'
            if keep in current:
                new[keep] = current[keep]
            else:
                new.pop(keep, None)
        return [{'op': 'replace', 'path': '', 'value': new}]

    def _secret_token(self, token):
        """``kmock.secret.NAME``: valid while the Secret ``kmock-tokens/NAME`` exists (data
        ``username``, ``audiences`` comma-separated), so a test can revoke it by deleting it."""
        name = token[len(SECRET_TOKEN_PREFIX):]
        try:
            secret = self.objects['v1/secrets', SECRET_TOKEN_NAMESPACE, name]
        except (KeyError, LookupError):
            return None
        if secret is None or secret.deleted:
            return None
        data = {key: base64.b64decode(value).decode()
                for key, value in (secret.raw.get('data') or {}).items()}
        return {'username': data.get('username', ''),
                'audiences': [a for a in data.get('audiences', '').split(',') if a]}

    def _token_review(self, body):
        token = _token_key((body.get('spec') or {}).get('token', ''))
        wanted = (body.get('spec') or {}).get('audiences') or []
        entry = self.tokens.get(token)
        if entry is None and token.startswith(SECRET_TOKEN_PREFIX):
            entry = self._secret_token(token)
        status = {'authenticated': False, 'error': 'invalid bearer token'}
        if entry is not None:
            audiences = entry.get('audiences') or []
            if not wanted or any(a in audiences for a in wanted):
                status = {'authenticated': True,
                          'user': {'username': entry['username'], 'uid': str(uuid.uuid5(uuid.NAMESPACE_OID, token)),
                                   'groups': ['system:serviceaccounts', 'system:authenticated']},
                          'audiences': [a for a in wanted if a in audiences] or audiences}
            else:
                status = {'authenticated': False, 'error': 'token audiences do not match'}
        return aiohttp.web.json_response({'apiVersion': 'authentication.k8s.io/v1', 'kind': 'TokenReview',
                                          'metadata': {'creationTimestamp': None},
                                          'spec': body.get('spec') or {}, 'status': status}, status=201)


async def main(port, tokens_file):
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    emulator = ShimEmulator()
    if tokens_file:
        with open(tokens_file) as f:
            emulator.tokens = json.load(f)
    async with emulator as k8s, kmock.Server(k8s, host='127.0.0.1', port=port):
        for plural, (group_version, kind, namespaced, subresources, shortnames) in RESOURCES.items():
            k8s.resources[f'{group_version}/{plural}'] = ResourceInfo(
                kind=kind, singular=kind.lower(), namespaced=namespaced, verbs=VERBS,
                subresources=subresources, shortnames=shortnames)
        k8s.resources['authentication.k8s.io/v1/tokenreviews'] = ResourceInfo(
            kind='TokenReview', singular='tokenreview', namespaced=False, verbs=['create'])
        print(f'k8s emulator listening on http://127.0.0.1:{port}', flush=True)
        await stop.wait()


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('port', type=int)
    parser.add_argument('--tokens', help='JSON file {token: {"username": ..., "audiences": [...]}}')
    args = parser.parse_args()
    asyncio.run(main(args.port, args.tokens))
