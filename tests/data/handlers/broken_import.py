"""A module that fails at import: the runtime exits with status 2 before ready."""
import sys

print("missing configuration DATABASE_URL", file=sys.stderr)
raise RuntimeError("cannot configure")
