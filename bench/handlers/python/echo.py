"""The Python echo handler the benchmarks time: returns the event unchanged."""


def handler(event, context):
    return event
