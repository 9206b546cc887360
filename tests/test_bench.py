"""`pqk bench` end to end: a tiny checkpoint at the contract's shape through the CLI (torch eager rows, ORT fp32 and
int8, the compile row switched off), its printed table and its JSON; a missing checkpoint is one clear error line."""
import json

import pytest
from conftest import run_pqk


def _pqk(*args, timeout=900):
    r = run_pqk(*args, timeout=timeout)
    return r.returncode, r.stdout[-4000:] + r.stderr[-3000:]


@pytest.mark.slow
def test_bench_cli(tmp_path, tiny_ckpt):
    rc, out = _pqk('bench', '--ckpt', tiny_ckpt, '--no-compile', '--warmup', 0, '--repeats', 2,
                   '--min-seconds', 0, '--threads', 1, '--out', tmp_path / 'b.json')
    assert rc == 0, out
    for label in ('torch eager', 'torch eager, plain Linear', 'ORT fp32', 'ORT int8 (dynamic)', 'load average'):
        assert label in out, out
    res = json.loads((tmp_path / 'b.json').read_text())
    assert res['shape'] == [1, 3, 384, 384] and res['model'] == 'tiny'
    rows = {r['row']: r for r in res['rows']}
    assert list(rows) == ['eager', 'eager_plain_linear', 'ort_fp32', 'ort_int8']
    assert all(r['skipped'] is None and r['p50_ms'] > 0 for r in rows.values()), rows
    assert rows['ort_fp32']['max_rel_err'] < 1e-4


def test_bench_missing_checkpoint(tmp_path):
    rc, out = _pqk('bench', '--ckpt', tmp_path / 'nope.pt', '--no-compile')
    assert rc == 1 and 'pqk bench:' in out and 'nope.pt' in out, out
