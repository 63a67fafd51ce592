"""Handlers for the pool tests: who answered (the instance), slow calls, crashes, a fork bomb."""
import os
import sys
import time

from probes import try_writes


def identity(event, context):
    """The instance that answered; sleeps event["sleep"] seconds first when asked."""
    if isinstance(event, dict) and event.get("sleep"):
        time.sleep(event["sleep"])
    if isinstance(event, dict) and event.get("crash"):
        print("crashing on purpose", file=sys.stderr, flush=True)
        os._exit(7)
    print("served", context.request_id, flush=True)
    return {"instance": os.environ.get("BLIXARD_INSTANCE"), "pid": os.getpid()}


def sandbox(event, context):
    """What the sandbox lets a handler do to the file system."""
    paths = ("/tmp/scratch-test", os.path.join(os.getcwd(), "written-by-handler"),
             "/etc/blixard-test")
    return {"tmpdir": os.environ.get("TMPDIR"), **try_writes(paths)}


def fork_bomb(event, context):
    print("forking", flush=True)
    while True:
        try:
            os.fork()
        except OSError:
            time.sleep(0.01)


def rendezvous(event, context):
    """Returns only once `event["parties"]` calls are inside the handler at the same time
    (each leaves a file in the instance's scratch dir), so it passes only when calls really run
    concurrently inside one instance."""
    shared, parties = os.path.join("/tmp", "rendezvous-" + event["tag"]), event["parties"]
    os.makedirs(shared, exist_ok=True)
    open(os.path.join(shared, context.request_id), "w").close()
    deadline = time.time() + 20
    while len(os.listdir(shared)) < parties:
        if time.time() > deadline:
            raise TimeoutError("only %d of %d calls arrived together" % (len(os.listdir(shared)), parties))
        time.sleep(0.01)
    return {"pid": os.getpid()}


def site(event, context):
    """Whether `site` ran, and that an installed package (PyYAML) imports either way."""
    import yaml

    return {"no_site": sys.flags.no_site, "yaml": yaml.__name__}
