"""Blixard's exceptions: one base class, one subclass per error code of the core.

Each subclass also derives from the matching builtin where there is one, so ``except KeyError``
catches a missing function and ``except TimeoutError`` a handler that ran too long.  Every
exception carries the core's ``Status``: ``.code`` ("not_found", ...), ``.message``, ``.field``
(the path of the offending input, e.g. ``spec.functions[1].memory``) and, for manifests,
``.file``/``.line``/``.column``.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

__all__ = [
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
    "InternalError",
    "error_class",
]


class BlixardError(Exception):
    """Base of every error the Blixard core reports."""

    code: str = "internal"

    def __init__(
        self,
        message: str = "",
        *,
        code: Optional[str] = None,
        field: str = "",
        file: str = "",
        line: int = 0,
        column: int = 0,
    ) -> None:
        if code is not None:
            self.code = code
        self.message = message
        self.field = field
        self.file = file
        self.line = line
        self.column = column
        super().__init__(self.describe())

    @property
    def location(self) -> str:
        """``file:line:column`` of the offending value, as far as it is known ("" if not)."""
        if not self.file:
            return ""
        out = self.file
        if self.line:
            out += f":{self.line}"
            if self.column:
                out += f":{self.column}"
        return out

    def describe(self) -> str:
        """``file:line:col: field: message``, leaving out the parts that are unknown."""
        parts = [p for p in (self.location, self.field) if p]
        parts.append(self.message or self.code)
        return ": ".join(parts)

    def __str__(self) -> str:
        return self.describe()

    # KeyError's __str__ would repr() the message; keep ours for every subclass.
    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()!r})"

    def __reduce__(self):  # pickling across processes (multiprocessing, pytest-xdist)
        return (
            _rebuild,
            (self.code, self.message, self.field, self.file, self.line, self.column),
        )


class InvalidSpec(BlixardError, ValueError):
    """Bad input: a manifest, a config, a flag, a name or a payload that is not JSON."""

    code = "invalid_spec"


class NotFound(BlixardError, KeyError):
    """No object of that name."""

    code = "not_found"



class AlreadyExists(BlixardError):
    """Create of a name that already exists."""

    code = "already_exists"


class Conflict(BlixardError):
    """A concurrent update won (stale resource version)."""

    code = "conflict"


class Throttled(BlixardError):
    """Past maxInstances / concurrentExecutions: retry later."""

    code = "throttled"


class Timeout(BlixardError, TimeoutError):
    """The handler ran past its timeout (or the server did not answer in time)."""

    code = "timeout"


class HandlerFailed(BlixardError):
    """The handler raised, crashed or broke the instance protocol."""

    code = "handler_failed"


class PayloadTooLarge(BlixardError):
    """Request or response over the function's payload limit."""

    code = "payload_too_large"


class Unavailable(BlixardError, ConnectionError):
    """Server not reachable, cluster closed, or no node to run on."""

    code = "unavailable"


class Unauthenticated(BlixardError):
    """Missing or wrong token."""

    code = "unauthenticated"


class PermissionDenied(BlixardError):
    """The token lacks the scope for this call."""

    code = "permission_denied"


class InternalError(BlixardError):
    """A bug in Blixard: please report it."""

    code = "internal"


_BY_CODE: Dict[str, Type[BlixardError]] = {
    cls.code: cls
    for cls in (
        InvalidSpec,
        NotFound,
        AlreadyExists,
        Conflict,
        Throttled,
        Timeout,
        HandlerFailed,
        PayloadTooLarge,
        Unavailable,
        Unauthenticated,
        PermissionDenied,
        InternalError,
    )
}


def error_class(code: str) -> Type[BlixardError]:
    """The exception class for a core error code ("not_found" -> NotFound)."""
    return _BY_CODE.get(code, BlixardError)


def _from_status(
    code: str, message: str, field: str = "", file: str = "", line: int = 0, column: int = 0
) -> BlixardError:
    """Called by blixard._core to turn a C++ blixard::Error into the right exception."""
    cls = error_class(code)
    return cls(message, code=code, field=field, file=file, line=line, column=column)


def _rebuild(code, message, field, file, line, column) -> BlixardError:
    return _from_status(code, message, field, file, line, column)
