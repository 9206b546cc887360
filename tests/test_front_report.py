"""The trade-off front in the reports (issue 22 item 5, issue 24 item 1), through `pqk aggregate` in a child process on
the doctored day of tests/synthetic_runs.py: each run's front status and the recommended run in summary.json, the
main sheet of result_table.xlsx and its column count; without intervals nothing is ambiguous (negative control)."""
import json

import pytest
from conftest import run_pqk
from synthetic_runs import DAY_FRONT, day_of_cards


def _aggregate(tmp_path, intervals: bool):
    ids = day_of_cards(tmp_path / 'runs', intervals=intervals)
    r = run_pqk('aggregate', '--runs-dir', tmp_path / 'runs', '--reports-dir', tmp_path / 'reports', timeout=300)
    assert r.returncode == 0, r.stderr
    return ids, json.loads((tmp_path / 'reports' / 'summary.json').read_text())


def test_front_and_recommendation_in_the_reports(tmp_path):
    import openpyxl
    ids, sj = _aggregate(tmp_path, True)
    name = {v: k for k, v in ids.items()}
    assert {name[r['run_id']]: r['front.status'] for r in sj['runs']} == DAY_FRONT
    [g] = sj['groups']
    assert list(g['recommended']) == ['cpu'], g['recommended']          # every run of the day timed on the CPU
    rec = g['recommended']['cpu']
    assert rec['run_id'] == ids['A1-fast'] and rec['speedup'] == pytest.approx(1.65) and rec['device'] == 'cpu'
    assert g['front'] == {'frontier': 4, 'ambiguous': 2, 'dominated': 1, 'unplaced': 1}
    by = {name[r['run_id']]: r for r in sj['runs']}
    assert by['E0']['front.noisy'] is True and by['E0']['front.load'] == 6.7 and by['E0']['front.speedup'] == 1.0
    assert by['B1']['front.speedup'] == pytest.approx(1.30)          # side by side, not 2430 ms / 280 ms from two runs
    wb = openpyxl.load_workbook(tmp_path / 'reports' / 'result_table.xlsx', read_only=True)
    rows = list(wb[g['key']].iter_rows(values_only=True))
    hdr = rows[0]
    assert len(hdr) <= 40 and len(rows) == 9, (len(hdr), len(rows))
    main = {name[r[0]]: dict(zip(hdr, r)) for r in rows[1:]}
    assert {k: v['front'] for k, v in main.items()} == DAY_FRONT
    assert [k for k, v in main.items() if v['recommended']] == ['A1-fast']
    idx = list(wb['versions'].iter_rows(values_only=True))
    assert dict(zip(idx[0], idx[1]))['recommended'] == f"{ids['A1-fast']} (cpu)"


def test_without_intervals_nothing_is_ambiguous_or_decisive(tmp_path):
    ids, sj = _aggregate(tmp_path, False)
    name = {v: k for k, v in ids.items()}
    got = {name[r['run_id']]: r['front.status'] for r in sj['runs']}
    assert got == {**DAY_FRONT, 'A1-early': 'dominated', 'B1': 'dominated'}, got
    assert sj['groups'][0]['recommended'] == {}
