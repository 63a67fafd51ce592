"""A hostile handler: each attempt to break out of its sandbox, with what happened.

`handler(event, context)` runs the attempt named by event["attack"] and returns
{"ok": bool, "detail": str}: ok=True means the attempt SUCCEEDED (an escape). The tests assert
ok is False for every attack. The attempts are the probes of issue 11 and the escape suite's list.
"""
import ctypes
import errno
import os
import socket

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                       ctypes.c_void_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

MS_REMOUNT, MS_BIND = 32, 4096
CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET = 0x10000000, 0x20000, 0x40000000
# x86_64 system call numbers
SYS = {"ptrace": 101, "kexec_load": 246, "init_module": 175, "finit_module": 313, "bpf": 321,
       "keyctl": 250, "add_key": 248, "perf_event_open": 298, "open_by_handle_at": 304,
       "setns": 308, "unshare": 272, "pivot_root": 155, "mount": 165, "chroot": 161,
       "userfaultfd": 323, "fsopen": 430, "open_tree": 428, "clone": 56}


def result(ok, detail):
    return {"ok": bool(ok), "detail": str(detail)}


def err():
    e = ctypes.get_errno()
    return "%s (%d)" % (errno.errorcode.get(e, "?"), e)


def read(path, size=4096):
    with open(path, "rb") as f:
        return f.read(size)


def try_read(path):
    try:
        data = read(path)
    except OSError as e:
        return result(False, "%s: %s" % (path, e))
    return result(len(data) > 0, "%s: read %d bytes" % (path, len(data)))


def status_field(name):
    for line in read("/proc/self/status", 1 << 16).decode().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def attack_identity(event):
    """Root with capabilities and no filter is the escape; anything else is contained."""
    cap_eff = int(status_field("CapEff"), 16)
    cap_bnd = int(status_field("CapBnd"), 16)
    seccomp = status_field("Seccomp")
    nnp = status_field("NoNewPrivs")
    uid_map = read("/proc/self/uid_map").decode().split()
    outer_uid = int(uid_map[1]) if len(uid_map) >= 2 else 0
    detail = "CapEff=%x CapBnd=%x Seccomp=%s NoNewPrivs=%s uid_map=%s" % (
        cap_eff, cap_bnd, seccomp, nnp, uid_map)
    contained = cap_eff == 0 and cap_bnd == 0 and seccomp == "2" and nnp == "1" and outer_uid != 0
    return result(not contained, detail)


def attack_read_shadow(event):
    return try_read("/etc/shadow")


def attack_read_root_home(event):
    found = []
    for path in ("/root/.ssh", "/root/.bash_history", "/root/.pyenv/version", "/home"):
        if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
            found.append(path)
    return result(bool(found), "visible: %s" % found)


def attack_read_data_dir(event):
    data_dir = event["dataDir"]
    found = [p for p in (data_dir, os.path.join(data_dir, "server.json")) if os.path.exists(p)]
    token = event.get("token", "")
    for path in found:
        if os.path.isfile(path):
            try:
                if token and token.encode() in read(path, 1 << 20):
                    return result(True, "token read from " + path)
            except OSError:
                pass
    return result(bool(found), "visible: %s" % found)


def attack_host_tmp(event):
    marker = event["hostTmpMarker"]
    return result(os.path.exists(marker), "%s exists: %s" % (marker, os.path.exists(marker)))


def attack_remount_root_rw(event):
    rc = libc.mount(None, b"/", None, MS_REMOUNT | MS_BIND, None)
    detail = "remount: %s" % ("done" if rc == 0 else err())
    wrote = []
    for path in ("/usr/blixard-escape", "/etc/blixard-escape", "/blixard-escape"):
        try:
            with open(path, "w") as f:
                f.write("escaped")
            wrote.append(path)
        except OSError as e:
            detail += "; %s: %s" % (path, e.strerror)
    return result(rc == 0 or wrote, detail + "; wrote %s" % wrote)


def attack_umount_tmp(event):
    rc = libc.umount2(b"/tmp", 2)  # MNT_DETACH
    return result(rc == 0, "umount /tmp: %s" % ("done" if rc == 0 else err()))


def attack_reach_api(event):
    host, port = event["apiHost"], int(event["apiPort"])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect((host, port))
        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        answer = s.recv(64)
        return result(True, "connected to %s:%d: %r" % (host, port, answer))
    except OSError as e:
        return result(False, "connect %s:%d: %s" % (host, port, e))
    finally:
        s.close()


def attack_network_interfaces(event):
    names = [name for _, name in socket.if_nameindex()]
    return result(names != ["lo"], "interfaces: %s" % names)


def attack_cgroup_limits(event):
    os.makedirs("/tmp/cg", exist_ok=True)
    rc = libc.mount(b"cgroup", b"/tmp/cg", b"cgroup", 0, b"memory")
    detail = "mount cgroup: %s" % ("done" if rc == 0 else err())
    raised = []
    targets = ["/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"]
    if rc == 0:  # else /tmp/cg is a plain directory of the scratch
        targets.append("/tmp/cg/memory.limit_in_bytes")
    for path in targets:
        try:
            with open(path, "w") as f:
                f.write("8589934592")
            raised.append(path)
        except OSError as e:
            detail += "; %s: %s" % (path, e.strerror)
    return result(rc == 0 or raised, detail + "; raised %s" % raised)


def attack_proc_knobs(event):
    os.makedirs("/tmp/p", exist_ok=True)
    rc = libc.mount(b"proc", b"/tmp/p", b"proc", 0, None)
    detail = "mount proc: %s" % ("done" if rc == 0 else err())
    opened = []
    for path in ("/proc/sys/kernel/core_pattern", "/tmp/p/sys/kernel/core_pattern",
                 "/proc/sysrq-trigger"):
        try:
            fd = os.open(path, os.O_WRONLY)
            os.close(fd)
            opened.append(path)
        except OSError as e:
            detail += "; %s: %s" % (path, e.strerror)
    return result(rc == 0 or opened, detail + "; opened for writing %s" % opened)


def attack_ptrace(event):
    """ptrace of a process we own (a child), of PID 1 of our namespace, and of another
    instance's host pid (given by the test: it must not even be visible)."""
    PTRACE_ATTACH = 16
    done = []
    pid = os.fork()
    if pid == 0:
        import time
        time.sleep(5)
        os._exit(0)
    try:
        targets = [pid, 1] + [int(p) for p in event.get("otherPids", [])]
        detail = []
        for target in targets:
            rc = libc.syscall(SYS["ptrace"], PTRACE_ATTACH, target, 0, 0)
            detail.append("%d: %s" % (target, "attached" if rc == 0 else err()))
            if rc == 0:
                done.append(target)
        visible = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        others = [p for p in event.get("otherPids", []) if int(p) in visible]
        return result(done or others, "; ".join(detail) + "; /proc shows %s" % visible)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def attack_write_dev(event):
    done = []
    detail = []
    for path in ("/dev/blixard-escape", "/dev/sda", "/dev/vda", "/dev/kvm", "/dev/mem",
                 "/dev/kmsg", "/dev/tty"):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
            done.append(path)
        except OSError as e:
            detail.append("%s: %s" % (path, e.strerror))
    # What the sandbox keeps: /dev/null works.
    with open("/dev/null", "w") as f:
        f.write("fine")
    return result(done, "opened %s; %s" % (done, "; ".join(detail)))


def attack_raise_rlimits(event):
    import resource
    raised = []
    detail = []
    for name in ("RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_AS", "RLIMIT_CORE"):
        which = getattr(resource, name)
        soft, hard = resource.getrlimit(which)
        if hard == resource.RLIM_INFINITY:
            detail.append("%s hard unlimited already" % name)
            continue
        try:
            resource.setrlimit(which, (hard + 1, hard + 1))
            raised.append(name)
        except (ValueError, OSError) as e:
            detail.append("%s: %s" % (name, e))
    return result(raised, "raised %s; %s" % (raised, "; ".join(detail)))


def attack_syscalls(event):
    """The system calls a contained handler has no business making."""
    made = []
    detail = []
    calls = {
        "unshare(CLONE_NEWUSER)": (SYS["unshare"], CLONE_NEWUSER),
        "unshare(CLONE_NEWNS)": (SYS["unshare"], CLONE_NEWNS),
        "unshare(CLONE_NEWNET)": (SYS["unshare"], CLONE_NEWNET),
        "setns": (SYS["setns"], os.open("/proc/self/ns/net", os.O_RDONLY), 0),
        "bpf": (SYS["bpf"], 0, 0, 0),
        "keyctl": (SYS["keyctl"], 0, 0, 0),
        "add_key": (SYS["add_key"], 0, 0, 0, 0, 0),
        "perf_event_open": (SYS["perf_event_open"], 0, 0, -1, -1, 0),
        "open_by_handle_at": (SYS["open_by_handle_at"], -100, 0, 0),
        "kexec_load": (SYS["kexec_load"], 0, 0, 0, 0),
        "init_module": (SYS["init_module"], 0, 0, 0),
        "finit_module": (SYS["finit_module"], -1, 0, 0),
        "pivot_root": (SYS["pivot_root"], 0, 0),
        "chroot": (SYS["chroot"], 0),
        "userfaultfd": (SYS["userfaultfd"], 0),
        "fsopen": (SYS["fsopen"], 0, 0),
        "open_tree": (SYS["open_tree"], -100, 0, 0),
    }
    for name, call in calls.items():
        ctypes.set_errno(0)
        rc = libc.syscall(*[ctypes.c_long(a) for a in call])
        e = ctypes.get_errno()
        # EPERM is the filter's (or the kernel's) no; EFAULT/EINVAL/EBADF would mean the call
        # reached the kernel's argument checks, i.e. it was allowed through.
        if rc == 0 or e not in (errno.EPERM, errno.ENOSYS):
            made.append("%s -> rc %d %s" % (name, rc, errno.errorcode.get(e, e)))
        else:
            detail.append("%s: %s" % (name, errno.errorcode.get(e, e)))
    return result(made, "not refused: %s; refused: %s" % (made, "; ".join(detail)))


def attack_fill_scratch(event):
    """Writes past the scratch quota: the handler gets ENOSPC, the host's disk is untouched."""
    written = 0
    chunk = b"x" * (1 << 20)
    try:
        with open("/tmp/fill", "wb") as f:
            while written < event.get("limitBytes", 1 << 30):
                f.write(chunk)
                f.flush()
                written += len(chunk)
    except OSError as e:
        os.unlink("/tmp/fill")
        return result(False, "stopped after %d MiB: %s" % (written >> 20, errno.errorcode.get(e.errno)))
    os.unlink("/tmp/fill")
    return result(True, "wrote %d MiB without a quota" % (written >> 20))


def attack_console_reopen(event):
    """Its console by a path (/proc/self/fd/1): the agent's FIFO or file, to open anew."""
    for fd in (1, 2):
        try:
            f = os.open("/proc/self/fd/%d" % fd, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            continue
        os.close(f)
        return result(True, "reopened its fd %d by /proc/self/fd" % fd)
    return result(False, "refused")


def attack_console_grow(event):
    """Its console as a file on the host's disk: grow it past any quota."""
    for fd in (1, 2):
        for how, grow in (("fallocate", lambda: os.posix_fallocate(fd, 0, 1 << 30)),
                          ("ftruncate", lambda: os.ftruncate(fd, 1 << 30))):
            try:
                grow()
            except OSError:
                continue
            return result(True, "%s of fd %d to 1 GiB" % (how, fd))
    return result(False, "its console is no file")


def handler(event, context):
    if event.get("attack") == "pid":
        return {"pid": os.getpid()}
    if event.get("attack") == "sleep":
        import time
        time.sleep(float(event.get("seconds", 5)))
        return {"slept": True}
    return globals()["attack_" + event["attack"]](event)
