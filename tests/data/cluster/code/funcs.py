"""Handlers used by the C++ cluster tests."""
import os
import time


def echo(event, context):
    return {"event": event, "function": context.function_name, "requestId": context.request_id}


def boom(event, context):
    raise RuntimeError("boom: " + str(event.get("why", "no reason")))


def crash(event, context):
    os._exit(7)


def slow(event, context):
    time.sleep(event.get("seconds", 60))
    return "done"
