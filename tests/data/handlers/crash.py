"""A handler whose process dies mid-request without answering."""
import os
import sys


def handler(event, context):
    print("crashing now", file=sys.stderr, flush=True)
    os._exit(3)
