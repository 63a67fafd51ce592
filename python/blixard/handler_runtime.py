"""Blixard's Python handler runtime: runs `def handler(event, context)` behind the instance protocol.

Standalone on purpose (no blixard package, no google.protobuf): it is embedded in the agent and
started for every cold start, so it imports only what the standard library loads fast.

Usage: python3 handler_runtime.py MODULE:FUNCTION [CODE_DIR]

Protocol (docs/instance-protocol.md): frames on fd 3 (agent -> handler) and fd 4 (handler -> agent),
each a 4-byte little-endian length + one serialized blixard.v1.InstanceFrame. We write `ready`, then
answer each `request` with a `response`. EOF on fd 3 ends the process with status 0.
"""

import json
import os
import sys
import time

if sys.flags.no_site:
    # Started with -S (the agent's default): the site-packages dirs without running their .pth
    # hooks, which cost more start-up than the interpreter itself.
    _version = "python%d.%d" % sys.version_info[:2]
    for _base in dict.fromkeys((sys.prefix, sys.exec_prefix)):
        for _dir in (os.path.join(_base, "lib", _version, "site-packages"),
                     os.path.join(_base, "local", "lib", _version, "dist-packages"),
                     os.path.join(_base, "lib", "python3", "dist-packages")):
            if os.path.isdir(_dir) and _dir not in sys.path:
                sys.path.append(_dir)

REQUEST_FD = 3
RESPONSE_FD = 4
MAX_FRAME = 64 << 20  # hard sanity bound; the agent enforces the real payload limit


# ---- the protobuf wire format, just what InstanceFrame needs ----

def _varint(value):
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf, pos):
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf):
    """Yields (field_number, value): ints for varints, memoryviews for length-delimited fields."""
    buf = memoryview(buf)
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            if pos + size > end:
                raise ValueError("truncated field")
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise ValueError("unsupported wire type %d" % wire)
        yield number, value


def _bytes_field(number, data):
    return _varint(number << 3 | 2) + _varint(len(data)) + data if data else b""


def _varint_field(number, value):
    return _varint(number << 3) + _varint(value) if value else b""


def _decode_request(body):
    """InstanceFrame bytes -> dict for a request frame, None for any other kind."""
    request = None
    for number, value in _fields(body):
        if number == 2 and not isinstance(value, int):
            request = {"request_id": "", "payload": b"", "deadline": 0, "function": "", "memory": 0}
            for n, v in _fields(value):
                if n == 1:
                    request["request_id"] = bytes(v).decode()
                elif n == 2:
                    request["payload"] = bytes(v)
                elif n == 3:
                    request["deadline"] = v - (1 << 64) if v >= 1 << 63 else v
                elif n == 4:
                    request["function"] = bytes(v).decode()
                elif n == 5:
                    request["memory"] = v
    return request


def _encode_ready(pid):
    inner = _varint_field(1, pid)
    return _varint(1 << 3 | 2) + _varint(len(inner)) + inner


def _encode_response(request_id, result=b"", error="", error_type=""):
    inner = (_bytes_field(1, request_id.encode()) + _bytes_field(2, result) +
             _bytes_field(3, error.encode("utf-8", "replace")) +
             _bytes_field(4, error_type.encode()))
    return _varint(3 << 3 | 2) + _varint(len(inner)) + inner


# ---- frame I/O on the pipe pair ----

def _read_exact(n):
    chunks, left = [], n
    while left:
        chunk = os.read(REQUEST_FD, min(left, 1 << 20))
        if not chunk:
            if left == n:
                return None
            raise EOFError("request pipe closed mid-frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_frame():
    header = _read_exact(4)
    if header is None:
        return None
    size = int.from_bytes(header, "little")
    if size > MAX_FRAME:
        raise ValueError("frame of %d bytes is too large" % size)
    return _read_exact(size) if size else b""


def _write_frame(body):
    data = memoryview(len(body).to_bytes(4, "little") + body)
    while data:
        data = data[os.write(RESPONSE_FD, data):]


# ---- the handler contract ----

def _print_user_traceback(exc):
    """The traceback without this runtime's and importlib's frames: the log tail an agent reports
    is short, so it should show the handler's own lines."""
    import traceback  # only on failure: it costs start-up time

    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if f.filename != __file__ and not f.filename.startswith("<frozen")
              and "importlib" not in f.filename]
    lines = ["Traceback (most recent call last):\n"] if frames else []
    lines += traceback.format_list(frames) + traceback.format_exception_only(type(exc), exc)
    sys.stderr.write("".join(lines))
    sys.stderr.flush()


class Context:
    """What a handler learns about its invocation (second argument of handler(event, context))."""

    __slots__ = ("request_id", "deadline", "memory_limit_mb", "function_name")

    def __init__(self, request_id, deadline, memory_limit_mb, function_name):
        self.request_id = request_id
        self.deadline = deadline  # unix milliseconds
        self.memory_limit_mb = memory_limit_mb
        self.function_name = function_name

    def remaining_time_ms(self):
        return max(0, self.deadline - int(time.time() * 1000))

    def __repr__(self):
        return "Context(request_id=%r, function_name=%r)" % (self.request_id, self.function_name)


def _load(spec, code_dir):
    module_name, sep, function_name = spec.partition(":")
    if not sep or not module_name or not function_name:
        raise ValueError("handler must be MODULE:FUNCTION, got %r" % spec)
    if code_dir:
        sys.path.insert(0, os.path.abspath(code_dir))
    import importlib
    target = importlib.import_module(module_name)
    for part in function_name.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError("%s is not callable" % spec)
    return target


def _answer(handler, request, function_name, memory):
    context = Context(request["request_id"], request["deadline"],
                      request["memory"] or memory, request["function"] or function_name)
    try:
        payload = request["payload"]
        event = json.loads(payload) if payload else None
        result = json.dumps(handler(event, context)).encode()
        return _encode_response(context.request_id, result=result)
    except Exception as e:  # the handler's failure is the caller's answer, not ours
        _print_user_traceback(e)
        message = str(e)
        if isinstance(e, MemoryError):
            message = "out of memory" + (": " + message if message else "")
        return _encode_response(context.request_id, error=message, error_type=type(e).__name__)


def _serve(handler, function_name, memory, concurrency):
    pool = None
    if concurrency > 1:
        # The agent sends up to `concurrency` requests at once (targetConcurrency); answer them
        # as they finish, each frame written whole under a lock.
        import threading
        from concurrent.futures import ThreadPoolExecutor
        pool = ThreadPoolExecutor(max_workers=concurrency)
        write_lock = threading.Lock()

        def work(request):
            frame = _answer(handler, request, function_name, memory)
            with write_lock:
                _write_frame(frame)
    while True:
        body = _read_frame()
        if body is None:
            break
        request = _decode_request(body)
        if request is None:
            continue  # not ours to answer (future frame kinds)
        if pool is None:
            _write_frame(_answer(handler, request, function_name, memory))
        else:
            pool.submit(work, request)
    if pool is not None:
        pool.shutdown(wait=True)


def main(argv):
    if len(argv) not in (2, 3):
        print("usage: handler_runtime.py MODULE:FUNCTION [CODE_DIR]", file=sys.stderr)
        return 2
    try:
        handler = _load(argv[1], argv[2] if len(argv) == 3 else "")
    except BaseException as e:  # SystemExit at import is a failed start too
        print("blixard: cannot load handler %r:" % argv[1], file=sys.stderr)
        _print_user_traceback(e)
        return 2
    function_name = os.environ.get("BLIXARD_FUNCTION", "")
    memory = int(os.environ.get("BLIXARD_MEMORY_MIB", "0") or 0)
    _write_frame(_encode_ready(os.getpid()))
    concurrency = int(os.environ.get("BLIXARD_CONCURRENCY", "1") or 1)
    _serve(handler, function_name, memory, concurrency)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
