"""A handler that raises: the caller gets handler_failed "ValueError: boom"."""


def handler(event, context):
    print("about to raise")
    raise ValueError("boom")
