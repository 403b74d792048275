"""notebooks/quickstart.ipynb runs top to bottom (nbclient), so it never rots."""
import nbclient
import nbformat


def test_quickstart_notebook_runs(repo_root):
  nb = nbformat.read(repo_root / "notebooks" / "quickstart.ipynb", as_version=4)
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(repo_root / "notebooks")}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert sum(o.output_type == "display_data" for o in outputs) == 2  # the routing and loss plots
  text = "".join(o.get("text", "") for o in outputs)
  assert "step 12/12" in text and "P('dp_ep', None, None)" in text
