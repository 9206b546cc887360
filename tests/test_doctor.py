"""`pqk doctor` end to end at demo scale (every stage in its own measured process, the cards' estimates), asked for
the CUDA path on a machine that may have no GPU: the CUDA checks must then be rows that say 'not available' and why,
never a crash. On a GPU machine the same test accepts ok / not available / failed rows."""
import json, os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_doctor_demo_cuda(tmp_path):
    import torch
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'TMPDIR': str(tmp_path)}
    p = subprocess.run([sys.executable, '-m', 'pqk.run.cli', 'doctor', '--device', 'cuda', '--scale', 'demo',
                        '--json', tmp_path / 'doctor.json'], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=1800)
    rep = json.loads((tmp_path / 'doctor.json').read_text())
    assert 'CUDA checks:' in p.stdout and 'E0_eval_teacher' in p.stdout, p.stdout[-3000:] + p.stderr[-2000:]
    checks = rep['stages']['gpu']['result']['checks']
    assert set(checks) == {'cuda_events', 'amp_fp16', 'nvml_power', 'modelopt_ptq_gpu', 'ort_cuda', 'tensorrt_build'}
    if not torch.cuda.is_available():
        assert all(c['status'] == 'not available' and 'CUDA is not available' in c['reason'] for c in checks.values())
        assert p.stdout.count('not available') >= 6, p.stdout
    else: assert all(c['status'] in ('ok', 'not available', 'failed') for c in checks.values()), checks
    assert p.returncode == 0 and all(not r.get('error') for s, r in rep['stages'].items() if s != 'gpu'), rep['stages']
    for s in ('forward', 'distill', 'export', 'ptq', 'ort', 'prune'):
        assert rep['stages'][s]['peak_gb'] > 0.1 and rep['stages'][s]['result'], s
    # a study (kind S) runs other cards' templates: it has no estimate of its own, and says so
    assert all(e['hours'] is not None for e in rep['cards'] if e['kind'] != 'S'), \
        [e for e in rep['cards'] if e['hours'] is None and e['kind'] != 'S']
    assert all("no estimate for kind 'S'" in e['missing'] for e in rep['cards'] if e['kind'] == 'S'), rep['cards']
    assert not [f for f in tmp_path.iterdir() if f.name.startswith('pqk-doctor-')]     # its work folder is gone
