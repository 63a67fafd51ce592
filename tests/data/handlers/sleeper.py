"""A handler that never returns, with a grandchild process: a timeout must kill both."""
import subprocess
import time


def handler(event, context):
    print("sleeping forever", flush=True)
    time.sleep(3600)


def with_child(event, context):
    subprocess.Popen(["sleep", "3600"])
    time.sleep(3600)
