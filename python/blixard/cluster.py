"""The Python SDK: ``Cluster`` and the handles it gives out (``Function``, ``Vm``, ``Trigger``).

A thin shape over the private extension ``blixard._core``: objects travel as canonical JSON text
and are returned here as plain dicts (``fn.get()["spec"]["memory"]``), keyword overrides are
mapped to the spec's field names, and every failure is a ``blixard.errors.BlixardError``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import datetime as _dt
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import (Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Sequence,
                    Union)

from . import _core
from .errors import InvalidSpec, NotFound, Unavailable

__all__ = ["Cluster", "Function", "Vm", "Trigger", "Invocation", "LogStream", "Watch", "connect"]

PathLike = Union[str, "os.PathLike[str]"]

# Keyword arguments that live in a nested message of the spec rather than at its top.
_FUNCTION_NESTED = {
    "min_instances": ("scaling", "minInstances"),
    "max_instances": ("scaling", "maxInstances"),
    "target_concurrency": ("scaling", "targetConcurrency"),
    "keep_warm": ("scaling", "keepWarm"),
}
_VM_NESTED = {
    "storage_pool": ("storage", "pool"),
    "storage_class": ("storage", "class"),
    "storage_size": ("storage", "size"),
}
# Keywords whose values are durations ("30s"); a number means seconds.
_DURATIONS = {"timeout", "keep_warm"}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _duration(value: Any) -> Any:
    if isinstance(value, _dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return f"{value:g}s"
    return value


def overrides_to_spec(
    overrides: Mapping[str, Any], nested: Mapping[str, tuple] = _FUNCTION_NESTED
) -> Dict[str, Any]:
    """Maps Python keywords to the spec's JSON names.

    ``memory="128M", concurrent_executions=100, min_instances=1`` becomes
    ``{"memory": "128M", "concurrentExecutions": 100, "scaling": {"minInstances": 1}}``.
    ``None`` values are dropped, so callers can pass every flag through unconditionally.
    """
    out: Dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in _DURATIONS:
            value = _duration(value)
        if isinstance(value, tuple):
            value = list(value)
        if key in nested:
            parent, child = nested[key]
            out.setdefault(parent, {})[child] = value
        else:
            name = _camel(key)
            if isinstance(value, Mapping) and isinstance(out.get(name), dict):
                out[name].update(value)
            else:
                out[name] = value
    return out


def _path(p: Optional[PathLike]) -> Optional[str]:
    return None if p is None else os.fspath(p)


def _items(list_json: str) -> List[Dict[str, Any]]:
    return list(json.loads(list_json).get("items", []))


def _payload(data: Any) -> str:
    try:
        return json.dumps(data)
    except (TypeError, ValueError) as e:
        raise InvalidSpec(f"payload is not JSON-serializable: {e}", field="payload") from e


def _queue_counts(queue: Dict[str, Any]) -> Dict[str, Any]:
    """A queue's status counts as ints: protobuf's JSON writes 64-bit numbers as strings and
    leaves zeros out."""
    st = queue.setdefault("status", {})
    for key in ("depth", "inFlight", "deadLettered"):
        st[key] = int(st.get(key, 0))
    st["oldestAgeSeconds"] = float(st.get("oldestAgeSeconds", 0))
    return queue


def _seconds(value: Any, field: str) -> float:
    """Seconds from a number, a timedelta or a duration text ("30s", "5m")."""
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return float(_core.parse_duration(str(value), field))


def _decode_bytes(value: str) -> Any:
    """A protobuf bytes field (base64 in JSON) holding JSON text, decoded."""
    text = base64.b64decode(value).decode("utf-8")
    return json.loads(text) if text.strip() else None


def _resolve(fut: "asyncio.Future[Any]", value: Any, exc: Optional[BaseException]) -> None:
    """Runs on the event loop (scheduled by the C++ completion with call_soon_threadsafe)."""
    if fut.cancelled():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


class _End(Exception):
    """Raised by a long poll's fetch when its stream is over (e.g. the function was deleted)."""


# Long polls wait at most this long per request, so close() and deadlines take effect soon.
_POLL_S = 1.0


class _LongPoll:
    """An iterator over a long-polled stream (log lines, events), with close() and a deadline.

    ``fetch(after, wait_ms)`` returns ``(items, next)``. Iteration blocks (interruptibly: Ctrl-C
    raises KeyboardInterrupt) until an item comes; it ends when ``close()`` is called, when the
    ``timeout`` (seconds, from creation) passes, or when ``follow`` is off and nothing is left.
    """

    def __init__(
        self,
        fetch: Callable[[int, int], "tuple[List[Dict[str, Any]], int]"],
        after: int,
        *,
        follow: bool,
        timeout: Optional[float],
        poll: float,
    ) -> None:
        self._fetch = fetch
        self._follow = follow
        self._poll = max(0.01, poll)
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._buffer: Deque[Dict[str, Any]] = collections.deque()
        self._closed = False
        # The first request is made now: an unknown name fails here, not at the first next(), and
        # a watch from "now" starts before anything the caller does next.
        items, self._next = fetch(after, 0)
        self._buffer.extend(items)
        self._drained = not items and not follow

    def __iter__(self) -> "_LongPoll":
        return self

    def __next__(self) -> Dict[str, Any]:
        while not self._buffer:
            if self._closed or self._drained:
                raise StopIteration
            wait = self._poll if self._follow else 0.0
            if self._deadline is not None:
                left = self._deadline - time.monotonic()
                if left <= 0:
                    raise StopIteration
                wait = min(wait, left)
            try:
                items, self._next = self._fetch(self._next, int(wait * 1000))
            except _End:
                self._closed = True
                raise StopIteration from None
            self._buffer.extend(items)
            if not items and not self._follow:
                self._drained = True
        return self._buffer.popleft()

    @property
    def position(self) -> int:
        """The sequence to resume from (pass it as ``after``)."""
        return self._next

    def close(self) -> None:
        """Ends the iteration (the next ``next()`` raises StopIteration)."""
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LogStream(_LongPoll):
    """``fn.logs()``: log line dicts (``sequence``, ``instance``, ``stream``, ``text``, ``time``).

    With ``follow=True`` it keeps long-polling until the function is deleted or ``close()``."""


class Watch(_LongPoll):
    """``c.watch()``: event dicts, oldest first.

    Each has ``type`` ("put", "delete" or "record"), ``kind``, ``name``, ``sequence``, and for
    records ``reason`` (ScaledUp, ScaledDown, Placed, Throttled, TimedOut, Failed, ...),
    ``message``, ``node`` and ``time``; for a put, ``object`` (the object as a dict)."""


def _log_line(line: Dict[str, Any]) -> Dict[str, Any]:
    line = dict(line)
    line["sequence"] = int(line.get("sequence", 0))
    line.setdefault("instance", "")
    line.setdefault("node", "")
    line.setdefault("stream", "stdout")
    line.setdefault("text", "")
    return line


def _event(e: Dict[str, Any]) -> Dict[str, Any]:
    e = dict(e)
    raw = e.pop("objectJson", "")
    e["object"] = json.loads(raw) if raw else None
    e["sequence"] = int(e.get("sequence", 0))
    if "storeRevision" in e:
        e["storeRevision"] = int(e["storeRevision"])
    for key in ("type", "kind", "name", "reason", "message", "node", "time"):
        e.setdefault(key, "")
    return e


@dataclass(frozen=True)
class Invocation:
    """One call's answer: the handler's result as JSON text, and where and how it ran."""

    result: str
    cold_start: bool
    node: str
    request_id: str
    duration_ms: float

    def json(self) -> Any:
        """The result decoded (``None`` for an empty result)."""
        return json.loads(self.result) if self.result.strip() else None


class Function:
    """A handle on one function; cheap, made by ``Cluster.function`` or ``create_function``."""

    def __init__(self, cluster: "Cluster", name: str) -> None:
        self._cluster = cluster
        self.name = name

    def get(self) -> Dict[str, Any]:
        """The stored object (``metadata``, ``spec``, ``status``) as a dict."""
        return json.loads(self._cluster._core.get_function(self.name))

    def status(self) -> Dict[str, Any]:
        return self.get().get("status", {})

    def invoke(self, data: Any = None, *, timeout: Optional[float] = None) -> Any:
        """Runs the handler on ``data`` (JSON-encoded here) and returns its decoded result.

        ``timeout`` (seconds) overrides the function's own for this call. The wait releases the
        GIL and honours Ctrl-C: KeyboardInterrupt is raised at once, while the call itself goes
        on server-side to its end (or its timeout).
        """
        return self.invoke_raw(_payload(data), timeout=timeout).json()

    async def invoke_async(self, data: Any = None, *, timeout: Optional[float] = None) -> Any:
        """``await fn.invoke_async(data)``: ``invoke`` without blocking the event loop.

        No thread waits per call: the C++ core runs it and its completion resolves the awaited
        future through ``loop.call_soon_threadsafe``. Cancelling the await abandons the result
        (the call goes on server-side).
        """
        return (await self.invoke_raw_async(_payload(data), timeout=timeout)).json()

    async def invoke_raw_async(
        self, payload: Union[str, bytes], *, timeout: Optional[float] = None
    ) -> Invocation:
        """``invoke_raw`` for asyncio: JSON text in, the full ``Invocation`` out."""
        if isinstance(payload, (bytes, bytearray)):
            payload = bytes(payload).decode("utf-8")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._cluster._core.invoke_async(
            self.name, payload, float(timeout or 0), loop, fut, _resolve
        )
        r = await fut
        return Invocation(r.result, r.cold_start, r.node, r.request_id, r.duration_ms)

    def invoke_raw(
        self, payload: Union[str, bytes], *, timeout: Optional[float] = None
    ) -> Invocation:
        """Runs the handler on ``payload``, JSON text as is; returns the full ``Invocation``."""
        if isinstance(payload, (bytes, bytearray)):
            payload = bytes(payload).decode("utf-8")
        r = self._cluster._core.invoke(self.name, payload, float(timeout or 0))
        return Invocation(r.result, r.cold_start, r.node, r.request_id, r.duration_ms)

    def submit(self, data: Any = None) -> Dict[str, Any]:
        """Invokes asynchronously (Lambda's Event type): the call is queued durably and run by
        the server, a failure retried twice; returns ``{"id", "state"}`` at once. Follow it with
        ``Cluster.invocation(id)``."""
        return json.loads(self._cluster._core.submit_invocation(self.name, _payload(data)))

    def logs(
        self,
        follow: bool = False,
        *,
        after: int = 0,
        timeout: Optional[float] = None,
        poll: float = _POLL_S,
    ) -> LogStream:
        """What the function's instances wrote to stdout/stderr, as an iterator of dicts
        (``sequence``, ``instance``, ``node``, ``stream``, ``text``, ``time``), oldest first.

        ``after``: a line's ``sequence`` to continue after (0: every line kept).
        ``follow=True`` keeps waiting for new lines until the function is deleted, the
        iterator is closed, or ``timeout`` seconds have passed. Raises NotFound at once for an
        unknown function.
        """
        read = self._cluster._core.function_logs
        return _log_stream(read, self.name, after, follow=follow, timeout=timeout, poll=poll)

    def watch(
        self, *, after: Optional[int] = None, timeout: Optional[float] = None,
        poll: float = _POLL_S
    ) -> "Watch":
        """This function's events (scaling, placement, throttles, failures, changes) as an
        iterator; see ``Cluster.watch``."""
        return self._cluster.watch("functions", self.name, after=after, timeout=timeout, poll=poll)

    def metrics(self) -> Dict[str, Any]:
        """``invocations``, ``invocationsLastHour``, ``errors``, ``throttles``, ``timeouts``,
        ``coldStarts``, ``coldStart``/``duration`` ({count, avgMs, p50Ms, p99Ms}), ..."""
        return json.loads(self._cluster._core.function_metrics(self.name))

    def delete(self) -> None:
        self._cluster._core.delete_function(self.name)

    def __repr__(self) -> str:
        return f"<blixard.Function {self.name!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Function) and (other._cluster, other.name) == (
            self._cluster,
            self.name,
        )

    def __hash__(self) -> int:
        return hash(("function", self.name))


def _log_stream(read, name: str, after: int, *, follow: bool, timeout: Optional[float],
                poll: float, instance: Optional[str] = None) -> LogStream:
    """Lines from ``read(name, after, wait_ms)`` (a function's or a VM set's); only
    ``instance``'s when given."""
    started = False

    def fetch(pos: int, wait_ms: int):
        nonlocal started
        try:
            chunk = json.loads(read(name, pos, wait_ms))
        except NotFound:
            # Unknown at the start: an error. Deleted since: the stream ends.
            if not started:
                raise
            raise _End() from None
        started = True
        lines = [_log_line(x) for x in chunk.get("lines", [])]
        if instance is not None:
            lines = [x for x in lines if x.get("instance") == instance]
        return lines, int(chunk.get("next", pos))

    return LogStream(fetch, after, follow=follow, timeout=timeout, poll=poll)


class Vm:
    """A handle on one replicated VM set."""

    def __init__(self, cluster: "Cluster", name: str) -> None:
        self._cluster = cluster
        self.name = name

    def get(self) -> Dict[str, Any]:
        return json.loads(self._cluster._core.get_vm(self.name))

    def status(self) -> Dict[str, Any]:
        """``phase``, ``readyReplicas``, ``primary``, ``instances``, ... ({} before any report)."""
        return self.get().get("status", {})

    def logs(
        self,
        follow: bool = False,
        *,
        replica: Optional[str] = None,
        after: int = 0,
        timeout: Optional[float] = None,
        poll: float = _POLL_S,
    ) -> LogStream:
        """The replicas' console lines (``instance`` names the replica), as ``Function.logs``;
        only ``replica``'s (e.g. ``"webapp-2"``) when given."""
        read = self._cluster._core.vm_logs
        return _log_stream(read, self.name, after, follow=follow, timeout=timeout, poll=poll,
                           instance=replica)

    def rollback(self, revision: Optional[int] = None) -> Dict[str, Any]:
        """Rolls back to a kept revision's spec (``status()["revisions"]``; default: the one
        before the newest), as a new revision; returns the set."""
        return json.loads(self._cluster._core.rollback_vm(self.name, revision or 0))

    def switchover(self, replica: str) -> Dict[str, Any]:
        """Makes ``replica`` (e.g. ``"postgres-2"``, a running standby) the primary of a set with
        a ``primaryElectionPolicy``: the old primary stops cleanly, then ``replica`` is fenced in
        and promoted; ``status()["failover"]`` times the steps. Returns the set as stored."""
        return json.loads(self._cluster._core.switchover_vm(self.name, replica))

    def watch(
        self, *, after: Optional[int] = None, timeout: Optional[float] = None,
        poll: float = _POLL_S
    ) -> "Watch":
        """This set's events (replicas started and failed, rollouts, failover steps) as an
        iterator; see ``Cluster.watch``."""
        return self._cluster.watch("vms", self.name, after=after, timeout=timeout, poll=poll)

    def scale(self, replicas: int) -> Dict[str, Any]:
        """Sets the wanted replicas (1 or more; the scheduler places new ones); returns the set."""
        return json.loads(self._cluster._core.scale_vm(self.name, replicas))

    def start(self) -> Dict[str, Any]:
        """Runs the set's replicas again after :meth:`stop`."""
        return json.loads(self._cluster._core.start_vm(self.name))

    def stop(self) -> Dict[str, Any]:
        """Stops every replica; the set and its spec stay."""
        return json.loads(self._cluster._core.stop_vm(self.name))

    def delete(self) -> None:
        self._cluster._core.delete_vm(self.name)

    def __repr__(self) -> str:
        return f"<blixard.Vm {self.name!r}>"


class Queue:
    """A handle on one durable queue, made by ``Cluster.queue`` or ``create_queue``.

    A message is on the server's disk before ``send`` returns; queue triggers deliver it to
    their function at least once, or a consumer takes it with ``receive`` and acknowledges it
    with ``ack``.
    """

    def __init__(self, cluster: "Cluster", name: str) -> None:
        self._cluster = cluster
        self.name = name

    def get(self) -> Dict[str, Any]:
        """The queue (``metadata``, ``spec``, ``status``: depth, inFlight, oldestAgeSeconds,
        deadLettered; counts as ints, 0 when none)."""
        return _queue_counts(json.loads(self._cluster._core.queue(self.name)))

    def status(self) -> Dict[str, Any]:
        return self.get().get("status", {})

    def send(self, data: Any = None) -> str:
        """Sends ``data`` (JSON-encoded here) as one message; its id."""
        return self.send_batch([data])[0]

    def send_batch(self, items: Sequence[Any]) -> List[str]:
        """Sends each item (JSON-encoded) in one durable write; their ids."""
        return list(self._cluster._core.send_messages(self.name, [_payload(d) for d in items]))

    def receive(
        self, max: int = 1, *, wait: Optional[float] = None, visibility_timeout: Any = None
    ) -> List[Dict[str, Any]]:
        """Takes up to ``max`` messages (``id``, ``body``, ``receipt``, ``receives``), hidden for
        ``visibility_timeout`` (the queue's own by default) until acknowledged with ``ack``.
        Waits up to ``wait`` seconds (at most 20) for the first."""
        wait_ms = int(round((wait or 0) * 1000))
        vis_ms = 0 if visibility_timeout is None else int(
            round(_seconds(visibility_timeout, "visibility_timeout") * 1000))
        return _items(self._cluster._core.receive_messages(self.name, max, wait_ms, vis_ms))

    def peek(self, max: int = 10) -> List[Dict[str, Any]]:
        """Messages a receive could take now, without taking them."""
        return _items(self._cluster._core.peek_messages(self.name, max))

    def ack(self, receipts: Union[str, Sequence[str]]) -> int:
        """Acknowledges deliveries by receipt (they are gone); how many were still in flight."""
        if isinstance(receipts, str):
            receipts = [receipts]
        return int(self._cluster._core.acknowledge_messages(self.name, list(receipts)))

    def purge(self) -> int:
        """Removes every message; how many."""
        return int(self._cluster._core.purge_queue(self.name))

    def delete(self) -> None:
        self._cluster.delete_queue(self.name)

    def __repr__(self) -> str:
        return f"Queue({self.name!r})"


class Trigger:
    """A handle on one trigger (HTTP path, queue or event)."""

    def __init__(self, cluster: "Cluster", name: str) -> None:
        self._cluster = cluster
        self.name = name

    def get(self) -> Dict[str, Any]:
        return json.loads(self._cluster._core.get_trigger(self.name))

    def url(self) -> str:
        """Where an http trigger is served (``status.url``), "" until the server fills it in."""
        return str(self.get().get("status", {}).get("url", ""))

    def delete(self) -> None:
        self._cluster._core.delete_trigger(self.name)

    def __repr__(self) -> str:
        return f"<blixard.Trigger {self.name!r}>"


class Cluster:
    """A cluster: embedded in this process (``Cluster.local``) or remote (``blixard.connect``).

    Use it as a context manager, or call ``close()``: for an embedded cluster that stops the
    server, the agent and every handler process it started.
    """

    def __init__(self, core: "_core.Cluster", *, description: str = "") -> None:
        self._core_cluster: Optional["_core.Cluster"] = core
        self._description = description
        self._closed = False

    @property
    def _core(self) -> "_core.Cluster":
        # Handles outlive close(); every call through them fails the same way, local or remote.
        if self._closed:
            raise Unavailable(f"the cluster ({self._description}) is closed")
        assert self._core_cluster is not None
        return self._core_cluster

    # ---- construction ----
    @classmethod
    def local(
        cls,
        dir: PathLike = ".blixard",
        *,
        python: Optional[str] = None,
        node_name: Optional[str] = None,
        nix_instantiate: Optional[str] = None,
    ) -> "Cluster":
        """Server + one agent in this process, state kept in SQLite under ``dir``.

        Python handlers run under ``python`` (default: this interpreter, ``sys.executable``).
        """
        path = os.fspath(dir)
        core = _core.Cluster.local(
            path,
            python=python or sys.executable,
            node_name=node_name or "",
            nix_instantiate=nix_instantiate or "",
        )
        return cls(core, description=f"local {path}")

    @classmethod
    def connect(
        cls,
        url: str,
        token: Optional[str] = None,
        *,
        timeout: Optional[float] = None,
        nix_instantiate: Optional[str] = None,
    ) -> "Cluster":
        """A cluster served at ``url``; ``token`` defaults to ``$BLIXARD_TOKEN``."""
        if token is None:
            token = os.environ.get("BLIXARD_TOKEN", "")
        core = _core.Cluster.connect(
            url, token=token, timeout=float(timeout or 0), nix_instantiate=nix_instantiate or ""
        )
        return cls(core, description=url)

    # ---- functions ----
    def create_function(
        self, name: str, config: Optional[PathLike] = None, **overrides: Any
    ) -> Function:
        """Creates a function from a config file (YAML, JSON or Nix) and/or keyword overrides.

        Keywords use the spec's names in snake_case and win over the file: ``handler="mod:fn"``,
        ``runtime="python"``, ``code="./src"``, ``command=[...]``, ``memory="128M"``,
        ``timeout="30s"`` (or seconds), ``concurrent_executions=100``, ``min_instances``,
        ``max_instances``, ``target_concurrency``, ``keep_warm``, ``env={...}``.
        """
        spec = overrides_to_spec(overrides, _FUNCTION_NESTED)
        if isinstance(spec.get("code"), (str, os.PathLike)):
            # A keyword names a path relative to the caller's working directory, not the file.
            spec["code"] = os.path.abspath(os.fspath(spec["code"]))
        self._core.create_function(name, _path(config), json.dumps(spec))
        return Function(self, name)

    def function(self, name: str) -> Function:
        """A handle on function ``name`` (not checked until used)."""
        return Function(self, name)

    def functions(self) -> List[Dict[str, Any]]:
        return _items(self._core.functions())

    def delete_function(self, name: str) -> None:
        self._core.delete_function(name)

    # ---- vms ----
    def create_vm(
        self,
        name: str,
        config: Optional[PathLike] = None,
        replicas: Optional[int] = None,
        **overrides: Any,
    ) -> Vm:
        """Creates a VM set. Keywords: ``memory``, ``vcpu``, ``storage_pool``, ``storage_class``,
        ``storage_size``, ``network``, ``ports``, ``primary_election_policy``, ``command``, ..."""
        spec = overrides_to_spec(dict(overrides, replicas=replicas), _VM_NESTED)
        self._core.create_vm(name, _path(config), json.dumps(spec))
        return Vm(self, name)

    def update_vm(self, name: str, config: PathLike, **overrides: Any) -> Vm:
        """A new config for VM set ``name`` (keywords as ``create_vm``; ``strategy`` "rolling" or
        "recreate"); its replicas are replaced by the set's update strategy (``Vm.status()``'s
        ``rollout`` tells how far). The replica count and stopped state are kept."""
        strategy = overrides.pop("strategy", None)
        spec = overrides_to_spec(overrides, _VM_NESTED)
        if strategy:
            spec.setdefault("updateStrategy", {})["type"] = strategy
        self._core.update_vm(name, os.fspath(config), json.dumps(spec))
        return Vm(self, name)

    def vm(self, name: str) -> Vm:
        return Vm(self, name)

    def vms(self) -> List[Dict[str, Any]]:
        return _items(self._core.vms())

    def delete_vm(self, name: str) -> None:
        self._core.delete_vm(name)

    # ---- triggers ----
    def create_trigger(
        self,
        name: str,
        function: Optional[str] = None,
        *,
        type: str = "http",
        http: Optional[bool] = None,
        path: Optional[str] = None,
        source: Optional[str] = None,
        methods: Optional[Iterable[str]] = None,
        batch_size: Optional[int] = None,
        batch_window: Any = None,
        spec: Optional[Mapping[str, Any]] = None,
    ) -> Trigger:
        """Creates a trigger running ``function``: ``http=True, path="/api/x"`` (the server's
        gateway then routes that path to the function; ``methods=["POST"]`` limits it) or
        ``type="queue"|"event", source="orders"`` (a queue trigger takes ``batch_size`` and
        ``batch_window``, seconds or "2s"); or pass the whole ``spec`` dict.
        ``trigger.url()`` tells where an http trigger is served."""
        if http:
            type = "http"
        elif http is False and type == "http" and (spec is None or "type" not in spec):
            raise InvalidSpec("http=False needs another type (queue, event)", field="type")
        body: Dict[str, Any] = dict(spec or {})
        body.update(
            overrides_to_spec(
                {
                    "type": type if spec is None or "type" not in spec else None,
                    "function": function,
                    "path": path,
                    "source": source,
                    "methods": list(methods) if methods is not None else None,
                    "batch_size": batch_size,
                    "batch_window": (None if batch_window is None else
                                     f"{_seconds(batch_window, 'batch_window'):g}s"),
                },
                {},
            )
        )
        self._core.create_trigger(name, json.dumps(body))
        return Trigger(self, name)

    def trigger(self, name: str) -> Trigger:
        return Trigger(self, name)

    def triggers(self) -> List[Dict[str, Any]]:
        return _items(self._core.triggers())

    def delete_trigger(self, name: str) -> None:
        self._core.delete_trigger(name)

    # ---- storage ----
    def create_storage_pool(
        self,
        name: str,
        path: PathLike,
        pool_type: str = "dir",
        storage_class: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Creates a storage pool: ``pool_type`` "dir" (a directory on each node: a volume stays on
        the node that made it) or "shared-dir" (a directory every node mounts); ``storage_class``
        is what VM specs name it by (default "local" for dir, "replicated" for shared-dir)."""
        spec: Dict[str, Any] = {"type": pool_type, "path": os.fspath(path)}
        if storage_class is not None:
            spec["class"] = storage_class
        return json.loads(self._core.create_storage_pool(name, json.dumps(spec)))

    def storage_pool(self, name: str) -> Dict[str, Any]:
        return json.loads(self._core.storage_pool(name))

    def storage_pools(self) -> List[Dict[str, Any]]:
        return _items(self._core.storage_pools())

    def delete_storage_pool(self, name: str) -> None:
        """Deletes a pool no VM names and no volume lives in."""
        self._core.delete_storage_pool(name)

    def volumes(self) -> List[Dict[str, Any]]:
        """The VM sets' volumes ("<vm>-<n>"), kept until deleted."""
        return _items(self._core.volumes())

    def delete_volume(self, name: str) -> None:
        """Deletes a volume and its data (refused while a replica uses it or its set wants it)."""
        self._core.delete_volume(name)

    # ---- networks ----
    def create_network(self, name: str, subnet: str) -> Dict[str, Any]:
        """Creates a private network for VM replicas (``create_vm(..., network=name)``): an IPv4
        ``subnet`` such as "10.88.0.0/24", a bridge per node, an address per replica."""
        return json.loads(self._core.create_network(name, json.dumps({"subnet": subnet})))

    def network(self, name: str) -> Dict[str, Any]:
        return json.loads(self._core.network(name))

    def networks(self) -> List[Dict[str, Any]]:
        return _items(self._core.networks())

    def delete_network(self, name: str) -> None:
        """Deletes a network no VM names."""
        self._core.delete_network(name)

    # ---- queues, events, async invocations ----
    def create_queue(
        self,
        name: str,
        *,
        visibility_timeout: Any = None,
        max_receives: Optional[int] = None,
        dead_letter_queue: Optional[str] = None,
    ) -> Queue:
        """Creates a durable queue. ``visibility_timeout`` (seconds or "30s") hides a received
        message until then; after ``max_receives`` failed deliveries a message moves to
        ``dead_letter_queue`` (a queue of its own)."""
        spec: Dict[str, Any] = {}
        if visibility_timeout is not None:
            spec["visibilityTimeout"] = (
                f"{_seconds(visibility_timeout, 'visibility_timeout'):g}s")
        if max_receives is not None:
            spec["maxReceives"] = max_receives
        if dead_letter_queue is not None:
            spec["deadLetterQueue"] = dead_letter_queue
        self._core.create_queue(name, json.dumps(spec))
        return Queue(self, name)

    def queue(self, name: str) -> Queue:
        return Queue(self, name)

    def queues(self) -> List[Dict[str, Any]]:
        """Stored queues and the server's own (``event:<trigger>``, ``async:<function>`` and
        their ``:dead`` letters), each with its status."""
        return [_queue_counts(q) for q in _items(self._core.queues())]

    def delete_queue(self, name: str) -> None:
        """Deletes a queue and the messages it holds."""
        self._core.delete_queue(name)

    def publish(self, source: str, data: Any = None) -> Dict[str, Any]:
        """Publishes an event (``data`` JSON-encoded here) to every event trigger on ``source``,
        durably; the answer names the triggers it reached."""
        return json.loads(self._core.publish_event(source, _payload(data)))

    def invocation(self, id: str) -> Dict[str, Any]:
        """Where an async invocation (``Function.submit``) is: ``state`` queued, running,
        retrying, succeeded (with ``result``) or failed (with ``error``)."""
        out = json.loads(self._core.invocation(str(id)))
        if "result" in out:
            out["result"] = _decode_bytes(out["result"])
        return out

    # ---- events ----
    def watch(
        self,
        kind: Optional[str] = None,
        name: Optional[str] = None,
        *,
        after: Optional[int] = None,
        from_revision: Optional[int] = None,
        timeout: Optional[float] = None,
        poll: float = _POLL_S,
    ) -> Watch:
        """Events as an iterator: object changes (``type`` "put"/"delete") and records
        (``type`` "record": ScaledUp, ScaledDown, Placed, Throttled, TimedOut, Failed, ...).

        ``kind`` ("functions", "vms", "triggers", "nodes", "instances"; singular works too) and
        ``name`` filter them. From now on by default; ``after=N`` resumes after sequence N of
        this server's stream (``after=0``: everything the server keeps). ``from_revision=R``
        watches the store instead: every object change with store revision R or later (each
        event's ``storeRevision``; an object's ``metadata.resourceVersion`` + 1 starts after it), the
        same from any server; records are not in the store. Iteration blocks until an event
        comes (Ctrl-C interrupts it) and ends on ``close()`` or after ``timeout`` seconds.
        """
        if from_revision is not None:
            if after is not None:
                raise ValueError("watch takes after= or from_revision=, not both")

            def changes(pos: int, wait_ms: int):
                batch = json.loads(self._core.changes(kind or "", name or "", pos, wait_ms))
                return [_event(e) for e in batch.get("events", [])], int(batch.get("next", pos))

            return Watch(changes, from_revision, follow=True, timeout=timeout, poll=poll)

        def fetch(pos: int, wait_ms: int):
            batch = json.loads(self._core.events(kind or "", name or "", pos, wait_ms))
            return [_event(e) for e in batch.get("events", [])], int(batch.get("next", pos))

        if after is None:
            # "From now" is now, not when iteration starts: fix the position here (-1: the newest).
            after = int(json.loads(self._core.events("", "", -1, 0)).get("next", 0))
        return Watch(fetch, after, follow=True, timeout=timeout, poll=poll)

    # ---- cluster ----
    def nodes(self) -> List[Dict[str, Any]]:
        return _items(self._core.nodes())

    def node(self, name: str) -> Dict[str, Any]:
        """One node: labels, capacity, phase, epoch, what it runs."""
        return json.loads(self._core.node(name))

    def cordon_node(self, name: str) -> Dict[str, Any]:
        """New work avoids the node; what runs there stays."""
        return json.loads(self._core.change_node(name, "cordon"))

    def uncordon_node(self, name: str) -> Dict[str, Any]:
        return json.loads(self._core.change_node(name, "uncordon"))

    def drain_node(self, name: str) -> Dict[str, Any]:
        """Cordon the node and move its instances off (idle ones now, busy ones when done)."""
        return json.loads(self._core.change_node(name, "drain"))

    def info(self) -> Dict[str, Any]:
        """``version``, ``node``, ``address`` and current ``revision`` of the server."""
        return json.loads(self._core.info())

    # ---- tokens (admin) ----
    def create_token(
        self,
        role: str,
        *,
        function: Optional[str] = None,
        ttl: Any = None,
        name: Optional[str] = None,
    ) -> Dict[str, Any]:
        """A bearer token with one role: ``admin``, ``read``, ``invoke`` or ``node``.

        ``function`` limits an invoke token to that function; ``ttl`` (seconds, a timedelta or
        "24h") makes it expire. Returns ``{"token": {...}, "secret": "blx_..."}``: the secret is
        shown this once (the server keeps only its hash).
        """
        ttl_text = "" if ttl is None else str(_duration(ttl))
        return json.loads(self._core.create_token(role, function or "", ttl_text, name or ""))

    def tokens(self) -> List[Dict[str, Any]]:
        """Every token: name, id, scopes, function, expiry (never a secret or a hash)."""
        return _items(self._core.tokens())

    def revoke_token(self, name_or_id: str) -> Dict[str, Any]:
        """Revokes a token at once, by name or id; returns what it was."""
        return json.loads(self._core.revoke_token(name_or_id))

    def apply(
        self,
        manifest: PathLike,
        *,
        dry_run: bool = False,
        prune: bool = False,
        stack: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Creates or updates every object of a manifest in one transaction (kubectl apply).

        Returns ``{"items": [{"kind", "name", "action"}...], "revision": ...}``; on an error
        nothing changed. ``action`` is created, configured (the object's own declaration
        changed), unchanged or pruned. ``dry_run``: change nothing, and give each change a
        ``diff`` (unified, live against merged, as ``kubectl diff``). ``prune``: also delete the
        stack's objects the manifest no longer holds. ``stack``: the stack of a manifest without
        a Platform (a Platform's is its name).
        """
        return json.loads(
            self._core.apply(os.fspath(manifest), dry_run, prune, stack or "")
        )

    def apply_objects(
        self,
        objects: Mapping[str, Any],
        mode: str = "apply",
        *,
        dry_run: bool = False,
        prune: bool = False,
        stack: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Applies an ObjectSet given as a dict (``{"functions": [...], "vms": [...]}``)."""
        return json.loads(
            self._core.apply_objects(json.dumps(objects), mode, dry_run, prune, stack or "")
        )

    def delete(
        self,
        manifest: Optional[PathLike] = None,
        *,
        stack: Optional[str] = None,
        dry_run: bool = False,
    ) -> Dict[str, Any]:
        """Deletes every object a manifest names, or every object of ``stack``, in one
        transaction. ``dry_run``: say what would go (with diffs), delete nothing."""
        if stack is not None and manifest is None:
            return json.loads(self._core.remove_stack(stack, dry_run))
        if manifest is None or stack is not None:
            raise InvalidSpec("give a manifest or a stack, one of them", field="stack")
        return json.loads(self._core.remove(os.fspath(manifest), dry_run))

    def load_manifest(self, manifest: PathLike) -> Dict[str, Any]:
        """Reads and validates a manifest without changing anything; returns the ObjectSet."""
        return json.loads(self._core.load_manifest(os.fspath(manifest)))

    def close(self) -> None:
        """Stops an embedded cluster (handles then fail); no-op for a remote one. Idempotent."""
        if not self._closed:
            self._closed = True
            core, self._core_cluster = self._core_cluster, None
            # Dropping the last reference destroys the embedded server, which releases the data
            # dir's lock, so the same dir can be opened again in this process.
            core.close()
            del core

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<blixard.Cluster {self._description}{state}>"


def connect(
    url: str,
    token: Optional[str] = None,
    *,
    timeout: Optional[float] = None,
    nix_instantiate: Optional[str] = None,
) -> Cluster:
    """``blixard.connect("http://127.0.0.1:7070", token=...)``: a remote cluster."""
    return Cluster.connect(url, token, timeout=timeout, nix_instantiate=nix_instantiate)
