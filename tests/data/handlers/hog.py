"""A handler that allocates (and touches) far more memory than its limit."""


def handler(event, context):
    print("allocating", flush=True)
    chunks = []
    for _ in range(256):
        chunks.append(b"\x01" * (8 << 20))
    return len(chunks)
