"""Run every notebook under nbs/ the way `nbdev-test` does, one pytest test per notebook.

Cells flagged with a word in `[tool.nbdev] tst_flags` (`slow`, `notest`) are skipped; set PQK_SLOW=1 to run `slow` cells too.
"""
import os
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook   # aliased so pytest does not collect it

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT / 'nbs').rglob('*.ipynb')
             if not p.name.startswith('_') and '.ipynb_checkpoints' not in p.parts and 'templates' not in p.parts)

@pytest.mark.parametrize('nb', NBS, ids=[str(p.relative_to(ROOT / 'nbs')) for p in NBS])
def test_notebook(nb, monkeypatch):
    monkeypatch.chdir(ROOT)
    flags = get_config(ROOT).tst_flags.split()
    if os.environ.get('PQK_SLOW') == '1': flags = [f for f in flags if f != 'slow']
    ok, secs = run_notebook(str(nb), skip_flags=flags, basepath=ROOT)
    assert ok, f'{nb.name} failed (run `nbdev-test {nb.relative_to(ROOT)}` to see the cell)'
