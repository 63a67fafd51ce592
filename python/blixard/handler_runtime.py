"""Blixard's Python handler runtime: runs `def handler(event, context)` behind the instance protocol.

Standalone on purpose (no blixard package, no google.protobuf): it is embedded in the agent and
started for every cold start, so it imports only what the standard library loads fast.

Usage: python3 handler_runtime.py MODULE:FUNCTION [CODE_DIR]
       python3 -S handler_runtime.py --zygote     (the template process, see _zygote_main)

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


# ---- the zygote: a pre-initialised template process that forks instances ----
#
# A fresh interpreter costs tens of milliseconds before it runs a line of the handler. The agent
# (src/runtime/zygote.cpp) keeps one interpreter per driver that has imported this runtime and
# what it uses, and asks it for each instance: the zygote forks, the child enters a new PID
# namespace (the zygote unshares it just for that fork), then confines itself with the same code
# as a natively spawned instance (src/runtime/confine.cpp, loaded from the agent's
# libblixard-confine.so): its own mount, IPC, UTS and network namespaces and cgroup, a root built
# for it, its own ids in a user namespace, no capabilities, the seccomp filter. Then it takes the
# pipes as fds 0-4 and runs main() as if exec'd.
#
# Control channel: fd 3 is a SOCK_SEQPACKET socket; each message is one JSON object.
#   zygote -> agent  {"kind": "hello", "pid": P, "namespaces": bool, "error": "..."}
#   agent -> zygote  {"kind": "spawn", "id": N, "args": [MODULE:FUNCTION, CODE_DIR?], "env": [...],
#                     "cwd", "confine": ["key=value", ...] (confinement_args)}
#                    with 4 fds (SCM_RIGHTS): request, response, stdout, stderr
#   zygote -> agent  {"kind": "spawned", "id": N, "pid": P} with the child's pidfd, or
#                    {"kind": "failed", "id": N, "error": "..."}
#   zygote -> agent  {"kind": "exit", "pid": P, "code": C, "signal": S} once a child is reaped
# EOF from the agent ends the zygote; its children die with it (PR_SET_PDEATHSIG).

_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
_CLONE_NEWPID, _CLONE_NEWNET = 0x20000000, 0x40000000
_MS_REC, _MS_PRIVATE = 16384, 1 << 18
_PR_SET_PDEATHSIG = 1


class _SetupError(Exception):
    def __init__(self, stage, err):
        super().__init__("%s: %s" % (stage, os.strerror(err) if isinstance(err, int) else err))


class _Libc:
    """The few system calls Python 3.11's os module lacks, through ctypes."""

    def __init__(self):
        import ctypes
        self.ctypes = ctypes
        self.lib = ctypes.CDLL(None, use_errno=True)
        self.lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                   ctypes.c_ulong, ctypes.c_void_p]
        self.lib.syscall.restype = ctypes.c_long

    def _check(self, ret, stage):
        if ret != 0:
            raise _SetupError(stage, self.ctypes.get_errno())

    def unshare(self, flags, stage="creating namespaces"):
        self._check(self.lib.unshare(flags), stage)

    def setns(self, fd, flags):
        self._check(self.lib.setns(fd, flags), "returning to the zygote's PID namespace")

    def prctl(self, option, value):
        self._check(self.lib.prctl(option, value, 0, 0, 0), "prctl")

    def mount(self, source, target, fstype, flags, stage):
        enc = lambda s: s.encode() if isinstance(s, str) else s
        self._check(self.lib.mount(enc(source), enc(target), enc(fstype), flags, None), stage)

    def load_confinement(self):
        """The agent's confinement library and seccomp program (once, in the zygote)."""
        ctypes = self.ctypes
        self.confine_lib = ctypes.CDLL(os.environ["BLIXARD_CONFINE_LIBRARY"], use_errno=True)
        self.confine_lib.blixard_confine.argtypes = [
            ctypes.POINTER(ctypes.c_char_p), ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t,
            ctypes.c_char_p, ctypes.c_size_t]
        with open(os.environ["BLIXARD_SECCOMP_FILTER"], "rb") as f:
            self.seccomp = f.read()

    def confine(self, args):
        ctypes = self.ctypes
        argv = (ctypes.c_char_p * max(1, len(args)))(*[a.encode() for a in args])
        error = ctypes.create_string_buffer(256)
        if self.confine_lib.blixard_confine(argv, len(args), self.seccomp, len(self.seccomp),
                                            error, len(error)) != 0:
            raise _SetupError("confining it", error.value.decode(errors="replace"))


def _become_instance(libc, req, fds):
    """In the forked child (PID 1 of its new PID namespace): the sandbox, then the handler."""
    import signal
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with the zygote, which dies with the agent
    libc.confine(req.get("confine", []))

    # fds: /dev/null, stdout, stderr, request, response; nothing else of the zygote's.
    null = os.open("/dev/null", os.O_RDONLY)
    moved = [os.dup(fd) for fd in (null, fds[2], fds[3], fds[0], fds[1])]
    for target, fd in enumerate(moved):
        os.dup2(fd, target)
    os.closerange(5, 1 << 16)
    # As `python -u` would: logs reach the agent line by line, even if the handler crashes.
    import io
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True,
                                  line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True,
                                  line_buffering=True, errors="backslashreplace")
    sys.stdin = open(0, closefd=False)

    env = dict(entry.partition("=")[::2] for entry in req.get("env", []))
    os.environ.clear()
    os.environ.update(env)
    # What the interpreter reads from the environment at start-up, applied now.
    for path in reversed([p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]):
        sys.path.insert(1, path)
    sys.dont_write_bytecode = bool(env.get("PYTHONDONTWRITEBYTECODE"))
    if req.get("cwd"):
        try:
            os.chdir(req["cwd"])
        except OSError as e:
            raise _SetupError("changing to the code directory", e.errno)
    sys.argv = [__file__] + list(req["args"])
    return main(sys.argv)


def _instance_child(libc, req, fds):
    code = 127
    try:
        code = _become_instance(libc, req, fds)
    except _SetupError as e:
        message = ("blixard: cannot start handler: %s\n" % e).encode()
        try:
            os.write(fds[3], message)  # the instance's stderr, if not yet moved to fd 2
        except OSError:
            os.write(2, message)
    except SystemExit as e:  # as an exec'd interpreter would exit
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException as e:  # never return into the zygote's loop
        try:
            _print_user_traceback(e)
        except BaseException:
            pass
        code = 1
    try:
        import atexit
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code if isinstance(code, int) else 1)


def _probe_namespaces(libc, own_pidns):
    """Whether this zygote may give its children their namespaces (root, or a permissive host)."""
    try:
        libc.unshare(_CLONE_NEWPID)
    except _SetupError as e:
        return str(e)
    pid = os.fork()
    if pid == 0:
        try:
            libc.unshare(_CLONE_NEWNS | _CLONE_NEWIPC | _CLONE_NEWUTS)
            libc.mount(None, "/", None, _MS_REC | _MS_PRIVATE, "making mounts private")
            os._exit(0)
        except BaseException:
            os._exit(1)
    libc.setns(own_pidns, _CLONE_NEWPID)
    _, status = os.waitpid(pid, 0)
    return "" if os.waitstatus_to_exitcode(status) == 0 else "mount namespace refused"


def _zygote_main():
    import gc
    import select
    import signal
    import socket

    libc = _Libc()
    libc.load_confinement()
    control = socket.socket(fileno=3)
    own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    # What instances use, imported once here rather than in every instance.
    import concurrent.futures  # noqa: F401  (targetConcurrency > 1)
    import importlib  # noqa: F401
    import io  # noqa: F401
    import resource  # noqa: F401
    import threading  # noqa: F401
    import traceback  # noqa: F401

    def send(message, fds=()):
        data = json.dumps(message).encode()
        if fds:
            socket.send_fds(control, [data], list(fds))
        else:
            control.send(data)

    refused = _probe_namespaces(libc, own_pidns)
    send({"kind": "hello", "pid": os.getpid(), "namespaces": not refused, "error": refused})
    # Objects alive now stay out of the collector's generations: a child that collects does not
    # write to (and so copy) the pages it shares with the zygote.
    gc.freeze()

    def reap():
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            signo = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0
            send({"kind": "exit", "pid": pid, "code": code, "signal": signo})

    def spawn(req, fds):
        try:
            libc.unshare(_CLONE_NEWPID)  # the next fork's child is PID 1 of a new namespace
        except _SetupError as e:
            return send({"kind": "failed", "id": req.get("id"), "error": str(e)})
        try:
            pid = os.fork()
        except OSError as e:
            pid = -1
            error = "fork: " + os.strerror(e.errno)
        if pid == 0:
            control.close()
            _instance_child(libc, req, fds)
        libc.setns(own_pidns, _CLONE_NEWPID)
        if pid < 0:
            return send({"kind": "failed", "id": req.get("id"), "error": error})
        pidfd = os.pidfd_open(pid)
        try:
            send({"kind": "spawned", "id": req.get("id"), "pid": pid}, [pidfd])
        finally:
            os.close(pidfd)

    while True:
        ready, _, _ = select.select([control, wake_r], [], [])
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            reap()
        if control in ready:
            data, fds, _, _ = socket.recv_fds(control, 1 << 20, 4)
            if not data:
                return 0  # the agent is gone
            try:
                req = json.loads(data)
                if req.get("kind") == "spawn" and len(fds) == 4:
                    spawn(req, fds)
                else:
                    send({"kind": "failed", "id": req.get("id"), "error": "bad request"})
            finally:
                for fd in fds:
                    os.close(fd)


def _zygote():
    try:
        return _zygote_main()
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the agent went away first


if __name__ == "__main__":
    sys.exit(_zygote() if sys.argv[1:] == ["--zygote"] else main(sys.argv))
