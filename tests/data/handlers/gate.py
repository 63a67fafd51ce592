"""A handler held until the test opens its gate (a file outside the instance's private /tmp), so
a test controls how long calls stay in flight without sleeping."""
import os
import time


def wait(event, context):
    deadline = time.time() + float(event.get("max", 60))
    while not os.path.exists(event["gate"]):
        if time.time() > deadline:
            raise TimeoutError("the gate was never opened")
        time.sleep(0.01)
    return {"instance": os.environ.get("BLIXARD_INSTANCE")}
