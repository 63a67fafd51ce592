"""What the sandbox lets a handler do, shared by the test handlers that report it."""


def try_writes(paths):
    """Writes "x" to each path: "written", or the errno that stopped it, by path."""
    out = {}
    for path in paths:
        try:
            with open(path, "w") as f:
                f.write("x")
            out[path] = "written"
        except OSError as e:
            out[path] = e.errno
    return out
