"""Test handlers that succeed: the event back, what the context says, the sandbox's view."""
import os

from probes import try_writes


def handler(event, context):
    return event


def context_info(event, context):
    return {
        "request_id": context.request_id,
        "function_name": context.function_name,
        "memory_limit_mb": context.memory_limit_mb,
        "remaining_ms": context.remaining_time_ms(),
        "deadline": context.deadline,
        "env": {k: v for k, v in os.environ.items() if k.startswith(("BLIXARD_", "TEST_"))},
        "pid": os.getpid(),
        "fds_open": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
    }


def big(event, context):
    return "x" * event["n"]


def not_json(event, context):
    return {1, 2}


def sandbox_view(event, context):
    """The sandbox as the handler sees it, to compare a zygote fork with a fresh interpreter."""
    import importlib

    print("sandbox_view ran")  # no flush: stdout must reach the agent's log line by line anyway
    writes = try_writes(("/tmp/written", os.path.join(os.getcwd(), "written"),
                         "/etc/blixard-written"))
    with open("/proc/self/status") as f:
        no_new_privs = [line.split()[1] for line in f if line.startswith("NoNewPrivs:")][0]
    with open("/proc/self/cgroup") as f:
        own_cgroup = any(line.rstrip().endswith("/" + os.environ["BLIXARD_INSTANCE"]) for line in f)
    return {
        "pid": os.getpid(),
        "hostname": os.uname().nodename,
        "cwd": os.getcwd(),
        "writes": writes,
        "no_new_privs": no_new_privs,
        "own_cgroup": own_cgroup,
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("TEST_", "TMPDIR"))},
        "fds_open": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        "extra_module": importlib.import_module(event["module"]).VALUE if event else None,
    }
