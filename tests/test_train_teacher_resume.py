"""`pqk train-teacher` across process boundaries: a training stopped by SIGTERM (what schedulers and `timeout` send)
exits with status 3 and keeps its checkpoint in `<out>.partial`; the same command continues it from there and saves
the weights an uninterrupted training saves."""
import re, signal, subprocess

import pytest
from safetensors.torch import load_file

from conftest import ROOT, pqk_argv, pqk_env, run_pqk, tiny_checkpoint, wait_until

STEPS = 40


def _weights(folder):
    "Every tensor of a saved (sharded safetensors) teacher folder."
    out = {}
    for f in sorted(folder.glob('*.safetensors')): out.update(load_file(f))
    return out


@pytest.mark.slow
def test_sigterm_then_same_command_continues(tmp_path):
    init = tiny_checkpoint(tmp_path / 'init.pt', dict(enc_embed_dim=32, enc_depth=2, enc_num_heads=2, dec_embed_dim=32,
                                                      dec_depth=2, dec_num_heads=2, head_type='linear'))
    (tmp_path / 'r.yaml').write_text(f'ckpt_every: 5\nstages:\n  - {{res: 64, steps: {STEPS}, lr: 1.0e-4, batch: 1, '
                                     'n_scenes: 2, warmup: 0}\n')
    args = lambda out: ['train-teacher', '--out', out, '--device', 'cpu', '--init', init,
                        '--recipe', tmp_path / 'r.yaml']
    whole = run_pqk(*args(tmp_path / 'whole'), timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert not (tmp_path / 'whole.partial').exists()                   # saved: its checkpoints are gone

    cut, err = tmp_path / 'cut', tmp_path / 'cut.err'
    with open(err, 'w') as fe:
        p = subprocess.Popen(pqk_argv(*args(cut)), cwd=ROOT, env=pqk_env(), stdout=subprocess.DEVNULL, stderr=fe)
        wait_until(lambda: list((tmp_path / 'cut.partial').glob('stage0/checkpoints/ckpt_*.pt')),
                   'the first checkpoint', p, limit=300, log=err)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=120) == 3, err.read_text()[-3000:]
    assert 'pqk train-teacher: stopped:' in err.read_text() and not cut.exists()

    again = run_pqk(*args(cut), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'continuing the training in' in again.stderr
    first = int(re.search(rf'(\d+)/{STEPS}\b', again.stderr).group(1))  # its progress starts where the cut one stopped
    assert 5 <= first < STEPS, again.stderr[-2000:]
    a, b = _weights(tmp_path / 'whole'), _weights(cut)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)   # as if it had never stopped
    assert not (tmp_path / 'cut.partial').exists()
