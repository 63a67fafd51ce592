"""Executes every notebook under the given folders in a fresh kernel; fails on the first error."""
import pathlib
import sys

import nbformat
from nbclient import NotebookClient


def main(folders: list[str]) -> int:
    notebooks = sorted(p for f in folders for p in pathlib.Path(f).glob("*.ipynb"))
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        print(f"notebook ok: {path}")
    print(f"{len(notebooks)} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["notebooks"]))
