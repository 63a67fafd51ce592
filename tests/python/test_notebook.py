"""Executes notebooks/quickstart.ipynb top to bottom in a fresh kernel (nbclient + ipykernel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.notebook


# Jupyter's own libraries warn about their path migration and old APIs; those are not ours.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_quickstart_notebook_runs(tmp_path):
    # Needs the `test` extra: pip install nbclient nbformat ipykernel.
    import nbclient
    import nbformat

    path = REPO / "notebooks" / "quickstart.ipynb"
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(
        o.get("text", "") or str(o.get("data", {}).get("text/plain", "")) for o in outputs
    )
    assert "hello notebook" in text
    assert "function/order-processor created" in text
    assert "closed: True" in text


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_queue_burst_notebook_runs(tmp_path):
    import nbclient
    import nbformat

    path = REPO / "notebooks" / "queue-burst.ipynb"
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(
        o.get("text", "") or str(o.get("data", {}).get("text/plain", "")) for o in outputs
    )
    assert "2000 of 2000 orders handled" in text, text
    assert "messages/s" in text and "figure:" in text
    assert "closed: True" in text
