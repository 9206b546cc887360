"""One figure per scrap in an archived notebook (issue 24): a template records a figure with
`pqk.run.scraps.record_figure`, which displays it; a pyplot figure left open is displayed again by the inline backend
(at `plt.show()` or the end of the cell), so every archived figure appeared twice. The templates close the figure
after recording it instead.
"""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = sorted((ROOT / 'nbs' / 'templates').glob('*.ipynb'))


def _cells(path):
    for c in json.loads(path.read_text())['cells']:
        if c['cell_type'] == 'code':
            yield c['source'] if isinstance(c['source'], str) else ''.join(c['source'])


def test_templates_close_each_recorded_figure():
    found = 0
    for t in TEMPLATES:
        for src in _cells(t):
            if 'record_figure(' not in src: continue
            found += 1
            assert 'plt.show()' not in src and 'plt.close(' in src, (t.name, src)
    assert found >= 5, found                     # every template that draws records its figure


@pytest.mark.slow
def test_record_then_close_displays_one_image(tmp_path):
    "In a kernel with the inline backend: record + close → one image; record + plt.show() → two (the old way)."
    import nbformat
    from nbclient import NotebookClient
    head = ("import matplotlib\nmatplotlib.use('module://matplotlib_inline.backend_inline')\n"
            "import matplotlib.pyplot as plt\nfrom pqk.run.scraps import record_figure\n"
            "fig, ax = plt.subplots(); ax.plot([0, 1])\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(head + "record_figure('x', fig); plt.close(fig)"),
                                         nbformat.v4.new_code_cell(head + "record_figure('y', fig); plt.show()")])
    NotebookClient(nb, timeout=300, kernel_name='python3', resources={'metadata': {'path': str(tmp_path)}}).execute()
    images = [sum('image/png' in o.get('data', {}) for o in c['outputs']) for c in nb.cells]
    assert images == [1, 2], images
