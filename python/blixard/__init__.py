"""Blixard: microVMs and serverless functions on one cluster, from Python.

>>> import blixard
>>> with blixard.Cluster.local("./.blixard") as c:          # server + agent in this process
...     fn = c.create_function("echo", handler="echo:handler", code=".", runtime="python")
...     fn.invoke({"x": 1})
>>> c = blixard.connect("http://127.0.0.1:7070", token="...")   # a remote cluster, same API

Every failure raises a subclass of ``blixard.errors.BlixardError``.
"""

from . import errors
from ._core import version as _core_version
from .cluster import Cluster, Function, Invocation, Queue, Trigger, Vm, connect
from .errors import (
    AlreadyExists,
    BlixardError,
    Conflict,
    HandlerFailed,
    InvalidSpec,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    Throttled,
    Timeout,
    Unauthenticated,
    Unavailable,
)

__version__: str = _core_version()

__all__ = [
    "Cluster",
    "Function",
    "Vm",
    "Trigger",
    "Queue",
    "Invocation",
    "connect",
    "errors",
    "BlixardError",
    "InvalidSpec",
    "NotFound",
    "AlreadyExists",
    "Conflict",
    "Throttled",
    "Timeout",
    "HandlerFailed",
    "PayloadTooLarge",
    "Unavailable",
    "Unauthenticated",
    "PermissionDenied",
    "__version__",
]
