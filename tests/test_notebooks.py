"""Run every notebook under nbs/ the way `nbdev-test` does, one pytest test per notebook.

Cells flagged with a word in `[tool.nbdev] tst_flags` (`slow`, `notest`) are skipped; set PQK_SLOW=1 to run `slow`
cells too.
The notebooks in SLOW carry the `slow` pytest marker (a whole notebook: `pytest -m "not slow"` skips it).
"""
import os, shutil, tempfile
from pathlib import Path
import pytest, torch
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook   # aliased so pytest does not collect it

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT / 'nbs').rglob('*.ipynb')
             if not p.name.startswith('_') and '.ipynb_checkpoints' not in p.parts and 'templates' not in p.parts)

IDS = [str(p.relative_to(ROOT / 'nbs')) for p in NBS]
# notebooks whose tests take over ~12 s on the shared 2-core machine: marked `slow`, so `pytest -m "not slow"`
# skips them (a notebook is one test: its cells depend on each other)
SLOW = {'compress/51_distill.ipynb', 'compress/52_quant.ipynb', 'compress/53_prune.ipynb', 'eval/33_protocol.ipynb',
        'train/43_teacher.ipynb'}
assert SLOW <= set(IDS), f'no such notebook (renamed?): {sorted(SLOW - set(IDS))}'

@pytest.mark.parametrize('nb', [pytest.param(p, marks=pytest.mark.slow) if i in SLOW else p for p, i in zip(NBS, IDS)],
                         ids=IDS)
def test_notebook(nb, monkeypatch):
    monkeypatch.chdir(ROOT)
    # the temporary folders the notebook makes are removed after it (paths unchanged: messages that clip a long path
    # are tested); a full run used to leave ~300 MB of 13_checkpoints' NaN checkpoints behind
    made, mkdtemp = [], tempfile.mkdtemp
    def recorded(*a, **k): made.append(mkdtemp(*a, **k)); return made[-1]
    monkeypatch.setattr(tempfile, 'mkdtemp', recorded)
    flags = get_config(ROOT).tst_flags.split()
    if os.environ.get('PQK_SLOW') == '1': flags = [f for f in flags if f != 'slow']
    threads = torch.get_num_threads()      # a notebook may set its own; the tests after it must not depend on the order
    try: ok, secs = run_notebook(str(nb), skip_flags=flags, basepath=ROOT)
    finally:
        torch.set_num_threads(threads)
        for d in made: shutil.rmtree(d, ignore_errors=True)
    assert ok, f'{nb.name} failed (run `nbdev-test {nb.relative_to(ROOT)}` to see the cell)'


LAYERS = ('core', 'models', 'data', 'eval', 'train', 'compress', 'export', 'edge', 'run')   # the import order


def test_notebook_numbers_are_unique_and_in_layer_order():
    "Every notebook's number is its own, and a lower layer's numbers all come before a higher layer's."
    nums = {}
    for p in ROOT.glob('nbs/*/*.ipynb'):
        if p.parent.name == 'templates': continue
        assert p.parent.name in LAYERS, f'{p.relative_to(ROOT)}: layer {p.parent.name!r}; expected one of {LAYERS}'
        n, _, name = p.stem.partition('_')
        assert n.isdigit() and name, f'{p.relative_to(ROOT)}: expected NN_name.ipynb'
        nums.setdefault(int(n), []).append(str(p.relative_to(ROOT)))
    assert not {n: ps for n, ps in nums.items() if len(ps) > 1}, {n: ps for n, ps in nums.items() if len(ps) > 1}
    order = [LAYERS.index(Path(ps[0]).parent.name) for n, ps in sorted(nums.items())]
    assert order == sorted(order), [ps[0] for n, ps in sorted(nums.items())]
