"""Test support: KMock's KubernetesEmulator made faithful enough for kopf and the operator.

KMock 0.8 as shipped does not work with kopf (see ../shared/TESTING.md). This subclass
fixes the listed gaps and adds the few API-server behaviours the operator relies on:

- create fills uid, resourceVersion, creationTimestamp, generation (and generateName),
  drops .status where a status subresource exists, and answers 201;
- patch understands merge-patch, strategic-merge (as merge), JSON-patch (a failed `test`
  op answers 422, not 500) and server-side apply (creates when absent); it bumps
  resourceVersion, bumps generation on non-status changes, keeps status and main-body
  writes apart, and a no-op patch changes nothing;
- delete honours finalizers and garbage-collects children by ownerReferences
  (background propagation), as the garbage collector would, including children created
  after their owner is gone;
- list returns kind/apiVersion/resourceVersion and filters by equality label selectors;
- watch subscribes and reads its backlog atomically: without ?resourceVersion it starts
  with the current objects, with one it replays the recorded events newer than it (the
  watch cache), then streams; it ends at ?timeoutSeconds;
- generateName collisions are retried (no spurious 409 for kopf's Events).

Not emulated (the e2e suite covers these on a real cluster): schema/CEL validation,
admission (Pod Security), RBAC, the field-ownership removal rules of server-side apply
(applied as a merge here), and every controller (tests patch Job/Deployment/Pod status
the way the controllers would).

`EmulatorThread` runs the emulator on its own event loop in a background thread, so a
synchronous test can drive the operator in a subprocess and act as the controllers over
plain HTTP.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import gzip
import importlib.resources
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import enums, k8s, references, rendering
from kubeaccel_api.constants import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION

MERGE_TYPES = (
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/json",
)
APPLY_TYPE = "application/apply-patch+yaml"
JSON_PATCH_TYPE = "application/json-patch+json"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (None removes a key; lists are replaced)."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def parse_selector(text: str) -> list[tuple[str, str, str | None]]:
    """Equality-based label selector terms: (key, op, value) with op in = != exists !exists."""
    terms: list[tuple[str, str, str | None]] = []
    for raw in filter(None, (t.strip() for t in text.split(","))):
        if " in " in raw or " notin " in raw or "(" in raw:
            raise k8s.KubernetesError(
                status=400, reason="BadRequest", message="set selectors unsupported"
            )
        if "!=" in raw:
            key, value = raw.split("!=", 1)
            terms.append((key.strip(), "!=", value.strip()))
        elif "==" in raw or "=" in raw:
            key, value = raw.replace("==", "=").split("=", 1)
            terms.append((key.strip(), "=", value.strip()))
        elif raw.startswith("!"):
            terms.append((raw[1:].strip(), "!exists", None))
        else:
            terms.append((raw, "exists", None))
    return terms


def selector_matches(terms: list[tuple[str, str, str | None]], labels: Mapping[str, str]) -> bool:
    """Whether `labels` satisfy every term."""
    for key, op, value in terms:
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!exists" and key in labels:
            return False
    return True


def _now() -> str:
    return (
        datetime.datetime.now(datetime.UTC)
        .replace(microsecond=0)
        .isoformat()
        .replace("+00:00", "Z")
    )


def _header(request: rendering.Request, name: str) -> str:
    for key, value in request.headers.items():
        if key.lower() == name.lower():
            return str(value).split(";")[0].strip()
    return ""


@attrs.define(kw_only=True)
class KubeEmulator(k8s.KubernetesEmulator):
    """KubernetesEmulator with the fixes listed in the module docstring."""

    # Act as the Job controller + kubelet and the Deployment controller (for benchmarks).
    auto_controllers: bool = False
    # Kinds whose changes watchers never see (to simulate lost watch events).
    mute: set[str] = attrs.field(factory=set)
    HISTORY = 20000
    _revision: int = attrs.field(default=0, init=False)
    _uids: set[str] = attrs.field(factory=set, init=False)
    # Recent watch events per resource: a watch from ?resourceVersion replays what it missed,
    # as the API server's watch cache does.
    _history: dict[references.resource, list[dict[str, Any]]] = attrs.field(
        factory=dict, init=False
    )
    # (event, kind, namespace, name, time.monotonic()) of every write, oldest first.
    writes: list[tuple[str, str, str, str, float]] = attrs.field(factory=list, init=False)
    # (User-Agent, RBAC verb, apiGroup, resource[/subresource]) of every API request.
    calls: list[tuple[str, str, str, str]] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # kmock's load_bundled() uses a deprecated importlib API; same data, current API.
        bundled = importlib.resources.files("kmock._internal").joinpath("resources.json.gz")
        self.resources.load_data(gzip.decompress(bundled.read_bytes()))
        self.resources[f"{GROUP}/{VERSION}/{PLURAL}"] = references.ResourceInfo(
            kind=KIND,
            singular=SINGULAR,
            namespaced=True,
            shortnames=set(SHORT_NAMES),
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            subresources={"status"},
        )

    # ----------------------------------------------------------------- helpers

    def _next_rv(self) -> str:
        self._revision += 1
        return str(self._revision)

    def _info(self, resource: references.resource) -> references.ResourceInfo:
        return self.resources[resource]

    def _has_status(self, resource: references.resource) -> bool:
        return "status" in self._info(resource).subresources

    def _api_version(self, resource: references.resource) -> str:
        return resource.version if not resource.group else f"{resource.group}/{resource.version}"

    def _live(self, key: tuple[references.resource, str | None, str]) -> dict[str, Any] | None:
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    async def _publish(self, resource: references.resource, event: dict[str, Any]) -> None:
        if self._info(resource).kind in self.mute:
            return
        history = self._history.setdefault(resource, [])
        history.append(event)
        del history[: -self.HISTORY]
        await self._buses[resource].put(event)

    async def _store(
        self, key: tuple[references.resource, str | None, str], obj: dict[str, Any], event: str
    ) -> None:
        resource = key[0]
        if key in self.objects:
            self.objects[key].history.append(obj)
        else:
            self.objects[key] = obj
        kind = self._info(resource).kind or ""
        self.writes.append((event, kind, key[1] or "", key[2], time.monotonic()))
        await self._publish(resource, {"type": event, "object": copy.deepcopy(obj)})
        if self.auto_controllers:
            self._control(kind, key, obj)

    # ----------------------------------------------------------------- writes

    @staticmethod
    def _action(request: rendering.Request) -> enums.action | None:
        # kmock's parser reads PUT .../status as no action; the API treats it as an update.
        if request.method == enums.method.PUT and request.name is not None:
            return enums.action.UPDATE
        return request.action

    def _record(self, request: rendering.Request) -> None:
        if request.resource is None or not request.resource.plural:
            return  # discovery: /api, /apis, /version
        if request.method == enums.method.GET:
            watching = request.params.get("watch") in ("true", "1")
            verb = "watch" if watching else "get" if request.name else "list"
        else:
            verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
            verb = verbs.get(str(request.method.value), str(request.method.value).lower())
        resource = request.resource.plural
        if request.subresource:
            resource += f"/{request.subresource}"
        agent = _header(request, "User-Agent")
        self.calls.append((agent, verb, request.resource.group or "", resource))

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        self._record(request)
        action = self._action(request)
        writes = (enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE)
        if request.resource is None or not request.resource.plural:
            return await super()._handle(request)  # discovery: /api, /apis, /version
        # Object reads are served here directly: kmock's generic reaction matching re-filters
        # every past request on each new one, which grows quadratically with traffic.
        if action == enums.action.FETCH:
            return aiohttp.web.json_response(await self._serve_fetch(request))
        if action == enums.action.LIST:
            return aiohttp.web.json_response(await self._serve_list(request))
        if action == enums.action.WATCH:
            return await self._stream_watch(request)
        if action not in writes:
            return await super()._handle(request)
        async with self._lock:
            if action == enums.action.CREATE:
                obj, code = await self._create(request.resource, request.namespace, request.data)
            elif action == enums.action.UPDATE:
                obj, code = await self._update(request)
            else:
                obj, code = await self._delete(
                    request.resource, request.namespace, request.name or ""
                )
        return aiohttp.web.json_response(obj, status=code)

    async def _create(
        self, resource: references.resource, namespace: str | None, data: Any
    ) -> tuple[dict[str, Any], int]:
        if not isinstance(data, dict):
            raise k8s.KubernetesError(
                status=400, reason="BadRequest", message="body is not an object"
            )
        obj = copy.deepcopy(data)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            # The API server retries generated names that collide (RetryGenerateName).
            while True:
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                if self._live((resource, namespace or meta.get("namespace"), meta["name"])) is None:
                    break
        if not meta.get("name"):
            raise k8s.KubernetesError(
                status=422, reason="Invalid", message="metadata.name is required"
            )
        namespace = namespace or meta.get("namespace")
        key = (resource, namespace, meta["name"])
        if self._live(key) is not None:
            raise k8s.KubernetesError(
                status=409, reason="AlreadyExists", message=f"{meta['name']} already exists"
            )
        if namespace is not None:
            meta["namespace"] = namespace
        meta.update(
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_rv(),
            creationTimestamp=_now(),
            generation=1,
        )
        obj.setdefault("apiVersion", self._api_version(resource))
        obj.setdefault("kind", self._info(resource).kind)
        if self._has_status(resource):
            obj.pop("status", None)
        self._uids.add(meta["uid"])
        await self._store(key, obj, "ADDED")
        owners = {ref.get("uid") for ref in meta.get("ownerReferences") or []}
        if owners and not owners & self._uids:
            # Created after its owner was deleted: the garbage collector removes it soon.
            asyncio.get_running_loop().create_task(self._collect(key))
        return obj, 201

    async def _update(self, request: rendering.Request) -> tuple[dict[str, Any], int]:
        resource, name = request.resource, request.name or ""
        assert resource is not None
        key = (resource, request.namespace, name)
        content_type = _header(request, "Content-Type")
        current = self._live(key)
        if current is None:
            if content_type == APPLY_TYPE:  # server-side apply creates
                return await self._create(resource, request.namespace, request.data)
            raise k8s.KubernetesObjectNotFoundError()
        if request.method == enums.method.PUT:
            patched = copy.deepcopy(request.data)
        elif content_type == JSON_PATCH_TYPE:
            try:
                patched = jsonpatch.apply_patch(current, request.data, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                # A failed `test` op (stale resourceVersion) is a conflict of content: 422.
                raise k8s.KubernetesError(status=422, reason="Invalid", message=str(exc)) from None
        elif content_type in MERGE_TYPES or content_type == APPLY_TYPE:
            patched = merge_patch(current, request.data)
        else:
            raise k8s.KubernetesError(
                status=415, reason="UnsupportedMediaType", message=content_type
            )

        new = copy.deepcopy(current)
        if request.subresource == "status":
            if patched.get("status") is None:
                new.pop("status", None)
            else:
                new["status"] = patched["status"]
        else:
            new = patched
            if self._has_status(resource):
                if "status" in current:
                    new["status"] = current["status"]
                else:
                    new.pop("status", None)
        # Identity fields are the server's.
        for field in (
            "uid",
            "creationTimestamp",
            "name",
            "namespace",
            "resourceVersion",
            "generation",
        ):
            if field in current["metadata"]:
                new.setdefault("metadata", {})[field] = current["metadata"][field]
        if new == current:
            return current, 200
        body_changed = {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
            k: v for k, v in current.items() if k not in ("metadata", "status")
        }
        if body_changed:
            new["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        new["metadata"]["resourceVersion"] = self._next_rv()
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await self._remove(key, new)
            return new, 200
        await self._store(key, new, "MODIFIED")
        return new, 200

    async def _delete(
        self, resource: references.resource, namespace: str | None, name: str
    ) -> tuple[dict[str, Any], int]:
        key = (resource, namespace, name)
        current = self._live(key)
        if current is None:
            raise k8s.KubernetesObjectNotFoundError()
        meta = current["metadata"]
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = _now()
                meta["resourceVersion"] = self._next_rv()
                await self._store(key, current, "MODIFIED")
            return current, 200
        await self._remove(key, current)
        return current, 200

    async def _collect(self, key: tuple[references.resource, str | None, str]) -> None:
        async with self._lock:
            if self._live(key) is not None:
                await self._delete(*key)

    async def _remove(
        self, key: tuple[references.resource, str | None, str], obj: dict[str, Any]
    ) -> None:
        self._uids.discard(obj["metadata"].get("uid", ""))
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self.objects[key].history.append(obj)
        self.objects[key].delete()
        kind = self._info(key[0]).kind or ""
        self.writes.append(("DELETED", kind, key[1] or "", key[2], time.monotonic()))
        await self._publish(key[0], {"type": "DELETED", "object": copy.deepcopy(obj)})
        # Garbage collection: dependents of the removed object go too (background).
        uid = obj["metadata"].get("uid")
        dependents = [
            k
            for k, o in list(self.objects.items())
            if not o.deleted
            and any(
                ref.get("uid") == uid
                for ref in o.raw.get("metadata", {}).get("ownerReferences") or []
            )
        ]
        for dep in dependents:
            live = self._live(dep)
            if live is not None:
                await self._delete(dep[0], dep[1], dep[2])

    # ----------------------------------------------------------------- controllers

    def _control(
        self, kind: str, key: tuple[references.resource, str | None, str], obj: dict[str, Any]
    ) -> None:
        status = obj.get("status") or {}
        if kind == "Job" and not status.get("conditions"):
            asyncio.get_running_loop().create_task(self._finish_job(key, obj))
        elif kind == "Deployment":
            generation = obj["metadata"].get("generation", 1)
            if status.get("observedGeneration") != generation:
                asyncio.get_running_loop().create_task(self._roll_out(key))

    async def _finish_job(
        self, key: tuple[references.resource, str | None, str], job: dict[str, Any]
    ) -> None:
        """The optimizer pod exits 0 with a summary; the Job controller marks it Complete."""
        name, ns = key[2], key[1]
        artifact = job["metadata"].get("labels", {}).get("kubeaccel.io/artifact-id", "")
        message = json.dumps({"artifactId": artifact, "speedup": 2.0, "sizeRatio": 0.5})
        terminated = {"exitCode": 0, "finishedAt": _now(), "message": message}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-pod",
                "namespace": ns,
                "labels": {"batch.kubernetes.io/job-name": name},
            },
            "spec": {"containers": [{"name": "optimize", "image": "x"}]},
        }
        pods = references.resource("", "v1", "pods")
        async with self._lock:
            created, _ = await self._create(pods, ns, pod)
            created["status"] = {
                "containerStatuses": [{"name": "optimize", "state": {"terminated": terminated}}]
            }
            await self._set_status((pods, ns, created["metadata"]["name"]), created["status"])
            await self._set_status(
                key, {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
            )

    async def _roll_out(self, key: tuple[references.resource, str | None, str]) -> None:
        """Every replica of the current template becomes available."""
        async with self._lock:
            current = self._live(key)
            if current is None:
                return
            replicas = current["spec"].get("replicas", 1)
            await self._set_status(
                key,
                {
                    "observedGeneration": current["metadata"]["generation"],
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "readyReplicas": replicas,
                    "availableReplicas": replicas,
                },
            )

    async def _set_status(
        self, key: tuple[references.resource, str | None, str], status: dict[str, Any]
    ) -> None:
        current = self._live(key)
        if current is None:
            return
        current["status"] = status
        current["metadata"]["resourceVersion"] = self._next_rv()
        await self._store(key, current, "MODIFIED")

    # ----------------------------------------------------------------- reads

    def _matching(self, request: rendering.Request) -> list[dict[str, Any]]:
        terms = parse_selector(request.params.get("labelSelector", ""))
        items = []
        for (resource, namespace, _), obj in self.objects.items():
            if resource != request.resource or obj.deleted:
                continue
            if request.namespace is not None and namespace != request.namespace:
                continue
            raw = obj.raw
            if selector_matches(terms, raw.get("metadata", {}).get("labels") or {}):
                items.append(copy.deepcopy(raw))
        return items

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        assert request.resource is not None
        if request.resource not in self.resources:
            raise k8s.KubernetesResourceNotFoundError()
        async with self._lock:
            items = self._matching(request)
            revision = str(self._revision)
        return {
            "apiVersion": self._api_version(request.resource),
            "kind": f"{self._info(request.resource).kind}List",
            "metadata": {"resourceVersion": revision},
            "items": items,
        }

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        assert request.resource is not None
        async with self._lock:
            obj = self._live((request.resource, request.namespace, request.name or ""))
        if obj is None:
            raise k8s.KubernetesObjectNotFoundError()
        return obj

    async def _stream_watch(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        assert request._raw_request is not None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        events = self._serve_watch(request)
        try:
            async for event in events:
                if isinstance(event, dict):
                    await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        return response

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""  # send the headers now: the stream is open even if nothing happens
        assert request.resource is not None
        bus = self._buses[request.resource]
        mark: Any = None
        try:
            since = int(request.params.get("resourceVersion") or 0)
            timeout = float(request.params.get("timeoutSeconds") or 0) or None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout if timeout else None
            terms = parse_selector(request.params.get("labelSelector", ""))
            # Writes publish under the lock, so subscribing and reading the backlog under it
            # leaves no gap between them.
            async with self._lock:
                mark = await bus.mark()
                if since:
                    backlog = [
                        e
                        for e in self._history.get(request.resource, [])
                        if int(e["object"]["metadata"].get("resourceVersion") or 0) > since
                    ]
                else:
                    backlog = [{"type": "ADDED", "object": o} for o in self._matching(request)]
                    since = self._revision
            for event in backlog:
                if self._watched(request, terms, event):
                    yield event
                    since = max(since, int(event["object"]["metadata"]["resourceVersion"]))
            stream = bus.stream(since=mark)
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return
                try:
                    event = await asyncio.wait_for(anext(stream), remaining)
                except (TimeoutError, StopAsyncIteration):
                    return
                if int(event["object"]["metadata"].get("resourceVersion") or 0) <= since:
                    continue
                if self._watched(request, terms, event):
                    yield event
        finally:
            if mark is not None:
                await bus.unmark(mark)

    @staticmethod
    def _watched(
        request: rendering.Request, terms: list[tuple[str, str, str | None]], event: dict[str, Any]
    ) -> bool:
        meta = event.get("object", {}).get("metadata", {})
        if request.namespace is not None and meta.get("namespace") != request.namespace:
            return False
        if request.name is not None and meta.get("name") != request.name:
            return False
        return selector_matches(terms, meta.get("labels") or {})


def kubeconfig_for(url: str) -> str:
    """A kubeconfig pointing at `url` (no auth)."""
    return (
        "apiVersion: v1\nkind: Config\ncurrent-context: kmock\n"
        f"clusters:\n- name: kmock\n  cluster:\n    server: {url}\n"
        "users:\n- name: kmock\n  user: {}\n"
        "contexts:\n- name: kmock\n  context: {cluster: kmock, user: kmock}\n"
    )


class EmulatorThread:
    """Run a KubeEmulator on an HTTP port from a background thread's event loop."""

    def __init__(self, *, auto_controllers: bool = False) -> None:
        self.auto_controllers = auto_controllers
        self.emulator: KubeEmulator | None = None
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # surfaced to the test thread in __enter__/__exit__
            self._error = exc
            self._started.set()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self.emulator = KubeEmulator(auto_controllers=self.auto_controllers)
        async with self.emulator, kmock.Server(self.emulator) as server:
            self.url = str(server.url).rstrip("/")
            self._started.set()
            await self._stop.wait()

    def __enter__(self) -> EmulatorThread:
        self._thread.start()
        self._started.wait(30)
        if self._error is not None or not self.url:
            raise RuntimeError("the API emulator did not start") from self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def kubeconfig(self) -> str:
        """A kubeconfig pointing at the emulator (no auth)."""
        return kubeconfig_for(self.url)

    def writes(self) -> Iterator[tuple[str, str, str, str, float]]:
        """(event, kind, namespace, name, monotonic time) of every write so far, oldest first."""
        assert self.emulator is not None
        # list() copies under the GIL; the emulator thread only appends.
        yield from list(self.emulator.writes)


class HttpError(Exception):
    """A non-2xx answer from the emulator."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


class Api:
    """A tiny JSON client the tests use to act as kubectl and as the controllers."""

    PATHS = {
        "AcceleratedModel": f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{PLURAL}",
        "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
        "PersistentVolumeClaim": "/api/v1/namespaces/{ns}/persistentvolumeclaims",
        "Service": "/api/v1/namespaces/{ns}/services",
        "Pod": "/api/v1/namespaces/{ns}/pods",
        "Event": "/api/v1/namespaces/{ns}/events",
        "Job": "/apis/batch/v1/namespaces/{ns}/jobs",
        "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
        "PodDisruptionBudget": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    }

    def __init__(self, url: str) -> None:
        self.url = url

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        """One JSON request; raises HttpError on a non-2xx answer."""
        import urllib.error
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise HttpError(exc.code, exc.read().decode(errors="replace")) from None

    def path(self, kind: str, ns: str, name: str | None = None, sub: str | None = None) -> str:
        """The URL path of a collection or an object."""
        path = self.PATHS[kind].format(ns=ns)
        return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def list(self, kind: str, ns: str) -> list[dict[str, Any]]:
        """Every object of a kind in a namespace."""
        return list(self.request("GET", self.path(kind, ns))["items"])

    def names(self, kind: str, ns: str) -> set[str]:
        """Names of every object of a kind in a namespace."""
        return {o["metadata"]["name"] for o in self.list(kind, ns)}

    def get(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        """One object, or None."""
        try:
            return dict(self.request("GET", self.path(kind, ns, name)))
        except HttpError as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """POST an object."""
        ns = obj["metadata"].get("namespace", "default")
        return dict(self.request("POST", self.path(obj["kind"], ns), obj))

    def patch(
        self, kind: str, ns: str, name: str, patch: dict[str, Any], sub: str | None = None
    ) -> dict[str, Any]:
        """Merge-patch an object (or its status with sub='status')."""
        return dict(
            self.request(
                "PATCH", self.path(kind, ns, name, sub), patch, "application/merge-patch+json"
            )
        )

    def delete(self, kind: str, ns: str, name: str) -> None:
        """Delete an object."""
        self.request("DELETE", self.path(kind, ns, name))


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Any, what: str, timeout: float = 60.0, interval: float = 0.02) -> Any:
    """Poll `check()` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class OperatorProcess:
    """The real `kubeaccel-operator` (python -m kubeaccel_operator) pointed at an emulator."""

    def __init__(self, kubeconfig: str, log_path: str, **settings: str) -> None:
        import os

        self.port = free_port()
        self.env = {
            **os.environ,
            "KUBECONFIG": kubeconfig,
            "KUBEACCEL_HEALTH_PORT": str(self.port),
            "KUBEACCEL_LOG_FORMAT": "plain",
            **{f"KUBEACCEL_{k.upper()}": v for k, v in settings.items()},
        }
        self.log_path = log_path
        self.proc: Any = None

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        """Start it and wait until kopf's liveness endpoint answers."""
        import subprocess
        import sys
        import urllib.request

        log = open(self.log_path, "a")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubeaccel_operator"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/healthz", timeout=1
                ) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        wait_for(healthy, "the operator's liveness endpoint", timeout=timeout)
        return self

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; kill if it does not exit in time. Returns the exit code."""
        import subprocess

        if self.proc is None or self.proc.poll() is not None:
            return int(self.proc.returncode) if self.proc else 0
        self.proc.terminate()
        try:
            return int(self.proc.wait(timeout))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return int(self.proc.wait(timeout))

    def log(self) -> str:
        """Everything the operator logged so far."""
        with open(self.log_path) as fh:
            return fh.read()


def finish_job(api: Api, ns: str, job: str, message: str, *, succeeded: bool = True) -> None:
    """Do what the Job controller and kubelet do when the optimizer pod exits."""
    pod = f"{job}-{uuid.uuid4().hex[:5]}"
    api.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod,
                "namespace": ns,
                "labels": {"batch.kubernetes.io/job-name": job, "job-name": job},
            },
            "spec": {"restartPolicy": "Never", "containers": [{"name": "optimize", "image": "x"}]},
        }
    )
    terminated = {"exitCode": 0 if succeeded else 1, "finishedAt": _now(), "message": message}
    api.patch(
        "Pod", ns, pod,
        {"status": {"phase": "Succeeded" if succeeded else "Failed",
                    "containerStatuses": [{"name": "optimize", "state": {"terminated": terminated}}]}},
        sub="status",
    )  # fmt: skip
    if succeeded:
        status = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    else:
        status = {
            "failed": 1,
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                }
            ],
        }
    api.patch("Job", ns, job, {"status": status}, sub="status")


def make_available(api: Api, ns: str, name: str, available: int | None = None) -> None:
    """Do what the Deployment controller does once every replica is ready."""
    deployment = api.get("Deployment", ns, name)
    assert deployment is not None, name
    replicas = deployment["spec"]["replicas"]
    ready = replicas if available is None else available
    api.patch(
        "Deployment", ns, name,
        {"status": {
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": ready, "availableReplicas": ready,
            "conditions": [{"type": "Available", "status": "True" if ready else "False"}],
        }},
        sub="status",
    )  # fmt: skip
