"""A handler whose cold start is held at import until the test opens START_GATE (a file outside the
instance's private /tmp), so a test controls how long a call waits for its instance."""
import os
import time

_deadline = time.time() + 60
while not os.path.exists(os.environ["START_GATE"]):
    if time.time() > _deadline:
        raise TimeoutError("the start gate was never opened")
    time.sleep(0.01)

CALLS = 0


def count(event, context):
    global CALLS
    CALLS += 1
    return {"calls": CALLS}
