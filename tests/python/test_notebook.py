"""Executes the notebooks top to bottom in a fresh kernel (nbclient + ipykernel), as a user would:
notebooks/quickstart.ipynb and notebooks/queue-burst.ipynb."""

from __future__ import annotations

import pytest

from conftest import REPO

pytestmark = [
    pytest.mark.notebook,
    # Jupyter's own libraries warn about their path migration and old APIs; those are not ours.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]


def run_notebook(name: str, timeout: int) -> str:
    """Runs notebooks/NAME; fails on any error output; returns the text it printed."""
    # Needs the `test` extra: pip install nbclient nbformat ipykernel matplotlib.
    import nbclient
    import nbformat

    path = REPO / "notebooks" / name
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    return "\n".join(
        o.get("text", "") or str(o.get("data", {}).get("text/plain", "")) for o in outputs
    )


def test_quickstart_notebook_runs():
    text = run_notebook("quickstart.ipynb", 180)
    assert "hello notebook" in text
    assert "function/order-processor created" in text
    assert "closed: True" in text


def test_queue_burst_notebook_runs():
    text = run_notebook("queue-burst.ipynb", 300)
    assert "2000 of 2000 orders handled" in text, text
    assert "messages/s" in text and "figure:" in text
    # The trigger kept several calls in flight while the burst waited: more than one instance.
    running = int(text.split("max instances running:")[1].split()[0])
    assert running >= 2, text
    assert "closed: True" in text
