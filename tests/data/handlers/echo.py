"""Test handlers that succeed: the event back, what the context says, the sandbox's view."""
import os


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
