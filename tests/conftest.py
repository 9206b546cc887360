import os, sys
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault('PQK_ROOT', str(ROOT))
# One intra-op thread for every test process (notebooks run in this process; papermill kernels and torchrun workers
# inherit it): the tests use tiny models, and on a shared 2-core machine two spinning OpenMP threads per process made
# a prediction 10-20x slower (measured: 12.9 s against 0.67 s for 4 pairs of a tiny model at load ~8).
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('MKL_NUM_THREADS', '1')

import pytest


def _contract_copy(src: Path, dst: Path, edit) -> Path:
    "A copy of a contract (its version line kept) with `edit(dict)` applied."
    import yaml
    d = yaml.safe_load(src.read_text()); edit(d)
    dst.write_text(src.read_text().splitlines()[0] + '\n' + yaml.safe_dump(d, sort_keys=False))
    return dst


@pytest.fixture(scope='session')
def release_setup(tmp_path_factory):
    """The real-scale setting shared by tests/test_realscale.py: a release-format DUSt3R-L/512 DPT checkpoint with
    random weights ({'args': Namespace(model=<official string>), 'model': state_dict}, 571 M parameters, built by
    pqk's own model class in a child process, ~20 s and 2.5 GB), contracts at 512² with 2 evaluation pairs, 2
    calibration pairs and a one-call latency protocol, W (its fp32 weight bytes) and the environment of the measured
    child processes (all cores: single-thread GEMMs at this size only double the wall time)."""
    import subprocess
    from types import SimpleNamespace
    import torch
    from pqk.models.dust3r import make_model
    from pqk.eval.efficiency import count_params
    d = tmp_path_factory.mktemp('realscale')
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': str(min(2, os.cpu_count() or 1)),
           'MKL_NUM_THREADS': str(min(2, os.cpu_count() or 1))}
    ck = d / 'DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth'
    code = 'import sys; from pqk.models.checkpoints import save_random_release_checkpoint as s; s(sys.argv[1])'
    subprocess.run([sys.executable, '-c', code, str(ck)], check=True, timeout=1800, env=env, capture_output=True)
    with torch.device('meta'): W = count_params(make_model('dust3r_512_dpt')) * 4
    def wl(x):
        x['input']['shape'] = [1, 3, 512, 512]
        x['data']['eval']['synthetic'].update(n_scenes=1, views_per_scene=2, n_pairs=2)
        x['calibration']['synthetic'].update(n_scenes=1)
        x['calibration']['count'] = 2
        x['teacher']['checkpoint'] = str(ck)
    def ev(x): x['efficiency']['latency'] |= {'warmup': 0, 'repeats': 1, 'min_seconds': 0.0}
    return SimpleNamespace(dir=d, ckpt=ck, W=W, env=env,
                           workload=_contract_copy(ROOT / 'configs/workload.yaml', d / 'workload.yaml', wl),
                           eval=_contract_copy(ROOT / 'configs/eval.yaml', d / 'eval.yaml', ev))
