"""`pqk edge-eval` end to end through the run_edge template on this CPU: a tiny DUSt3R checkpoint at the
contract's shape, timed with the torch backend while a recorded tegrastats file is replayed (the log carries the
replay's power numbers, computed here by hand, and no energy per pair: the log is not this host's), then with the
ONNX Runtime backend on its export; a backend that is not installed gives a failed log that says why (a missing or
malformed power log is tested in nbs/edge/66_power.ipynb, a hostile 100 MB one in tests/test_hostile.py).
`pqk aggregate` puts the edge columns beside the efficiency columns."""
import csv, json, shutil
from pathlib import Path
import pytest

from conftest import run_pqk

pytestmark = pytest.mark.slow

# Orin NX lines (JetPack 5 format) at 500 ms: VDD_IN 6, 8, 10 and 8 W; one line cut off and one foreign line.
LINE = ('04-21-2024 09:52:{s:02d} RAM 3421/15656MB (lfb 1050x4MB) SWAP 0/7828MB (cached 0MB) CPU [21%@1984,11%@1984,'
        'off,off] EMC_FREQ 9%@3199 GR3D_FREQ 93%@[918] cpu@50.5C gpu@51.4C tj@{tj}C VDD_IN {mw}mW/{mw}mW '
        'VDD_CPU_GPU_CV 3000mW/3000mW VDD_SOC 1500mW/1500mW')
REPLAY = [LINE.format(s=1, tj=60, mw=6000), LINE.format(s=1, tj=61, mw=8000), LINE.format(s=2, tj=62, mw=10000)[:-40],
          'NVPM WARN: fan mode is not set!', LINE.format(s=2, tj=96, mw=10000), LINE.format(s=3, tj=63, mw=8000)]
AVG_W, PEAK_W, SKIPPED = (6 + 8 + 10 + 8) / 4, 10.0, 2          # by hand from the lines above


def _pqk(*args, timeout=900):
    r = run_pqk(*args, timeout=timeout)
    return r.returncode, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.fixture(scope='module')
def tiny(tmp_path_factory, tiny_ckpt, pair_onnx):
    "A tiny DUSt3R checkpoint and its ONNX export, at the workload's input shape."
    d = tmp_path_factory.mktemp('edge')
    shutil.copy(tiny_ckpt, d / 'tiny.pt'); shutil.copy(pair_onnx, d / 'tiny.onnx')
    (d / 'tegrastats.log').write_text('\n'.join(REPLAY) + '\n')
    return d


def _run(d, name, *extra):
    log = d / f'{name}.json'
    rc, out = _pqk('edge-eval', '--log', log, '--runs-dir', d / 'runs', '--reports-dir', d / 'reports',
                   '--min-pairs', 3, '--min-seconds', 0, *extra)
    return rc, out, (json.loads(log.read_text()) if log.is_file() else None)


def test_edge_eval_torch_with_replayed_power(tiny):
    from pqk.core.logschema import log_problems
    rc, out, rec = _run(tiny, 'torch', '--ckpt', tiny / 'tiny.pt', '--power-log', tiny / 'tegrastats.log')
    assert rc == 0, out
    assert log_problems(rec) == [] and rec['kind'] == 'edge' and rec['status'] == 'passed', rec['reason']
    e = rec['edge_device']
    assert (e['backend'], e['precision'], e['power_sampler'], e['power_rail']) == \
        ('torch', 'fp32', 'tegrastats-replay', 'VDD_IN')
    assert e['timed_pairs'] >= 3 and e['warmup'] == 2 and e['error'] is None
    assert e['latency_p50_ms'] <= e['latency_p90_ms'] <= e['latency_p95_ms'] <= e['latency_p99_ms']
    assert e['power_avg_W'] == pytest.approx(AVG_W) and e['power_peak_W'] == pytest.approx(PEAK_W)
    assert e['power_samples'] == 4 and e['power_skipped_lines'] == SKIPPED
    # the replayed log was recorded elsewhere at another time: no energy per pair from this host's timed window
    assert e['energy_per_pair_J'] is None and 'energy per pair not computed: the power log was replayed' in e['notes']
    assert 'no energy per pair (see notes)' in rec['reason'], rec['reason']
    assert (e['thermal_events'], e['throttle'], e['temp_max_C']) == (1, True, 96.0)      # tj 96 °C ≥ 95 °C
    assert rec['model']['name'] == 'tiny' and rec['resource']['power_avg_W'] == pytest.approx(AVG_W)
    assert rec['efficiency']['latency_p50_ms'] == e['latency_p50_ms'] and '[torch fp32]' in rec['efficiency']['device']
    assert (Path(rec['artifacts']['notebook']).suffix, 'power_trace' in rec['artifacts']) == ('.ipynb', True)
    with open(tiny / 'reports' / 'summary.csv') as f:
        rows = list(csv.DictReader(f))
    cols = list(rows[0])
    eff = [i for i, c in enumerate(cols) if c.startswith('efficiency.')]
    edge = [i for i, c in enumerate(cols) if c.startswith('edge_device.')]
    assert edge[0] == eff[-1] + 1                                   # edge columns right after the efficiency block
    assert float(rows[-1]['edge_device.power_avg_W']) == pytest.approx(AVG_W)


def test_edge_eval_ort_backend(tiny):
    from pqk.core.logschema import log_problems
    rc, out, rec = _run(tiny, 'ort', '--ckpt', tiny / 'tiny.pt', '--onnx', tiny / 'tiny.onnx',
                        '--power-sampler', 'none', '--no-aggregate')
    assert rc == 0, out
    assert log_problems(rec) == [] and rec['status'] == 'passed', rec['reason']
    e = rec['edge_device']
    assert (e['backend'], e['precision'], e['power_sampler'], e['power_avg_W']) == ('ort', 'fp32', 'none', None)
    assert e['runtime'].startswith('onnxruntime') and e['fidelity_rel_err'] < 1e-4 and e['timed_pairs'] >= 3
    assert rec['model']['name'] == 'tiny' and rec['efficiency']['size_mb'] > 0


def test_edge_eval_failures_leave_a_log(tiny):
    from pqk.core.logschema import log_problems
    rc, out, rec = _run(tiny, 'trt', '--ckpt', tiny / 'tiny.pt', '--backend', 'tensorrt',
                        '--engine', tiny / 'none.engine', '--no-aggregate')
    assert rc == 1 and rec['status'] == 'failed' and log_problems(rec) == []
    # not installed here: the reason says so; where TensorRT exists, the engine file is missing
    r = rec['reason']
    assert 'TensorRT is not importable' in r or 'none.engine: no such TensorRT engine file' in r, r
