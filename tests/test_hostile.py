"""Hostile input, one case (at least) per class of the hardening issue, through the `pqk` command as a user meets it.

Each case checks the *behaviour* a user sees: exit status, one clear line naming the file / field / value (no
traceback unless `--debug`), a `failed` log with the reason for runs that started, nothing half-written, and reports
that do not depend on the working directory. Cheap cases only: the run cases stop before any prediction.
"""
import json, os, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / 'configs'
sys.path.insert(0, str(Path(__file__).parent))


def pqk(*args, cwd=ROOT, env=None, timeout=240):
    return subprocess.run([sys.executable, '-m', 'pqk.run.cli', *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def one_clear_line(r, *words):
    "Exit status 1 or 2, no traceback, and the error line names every word."
    out = r.stdout + r.stderr
    assert r.returncode in (1, 2), out
    assert 'Traceback' not in out, out
    assert all(w in out for w in words), (words, out)


def the_log(runs: Path) -> dict:
    [log] = list(runs.glob('*/log.json'))
    return json.loads(log.read_text())


# --- 1. bounded parsing ------------------------------------------------------------------------------------------------

def test_oversized_contract_is_refused_with_its_size(tmp_path):
    p = tmp_path / 'eval.yaml'
    p.write_text((CFG / 'eval.yaml').read_text() + ('#' * 100 + '\n') * 11_000)        # ~1.1 MB of comments
    r = pqk('devcheck', '--eval', p, '--card', ROOT / 'taskcards' / 'E0_eval_teacher.md')
    one_clear_line(r, 'eval.yaml', f'{p.stat().st_size:,} bytes', 'at most')


def test_checkpoint_asking_for_an_endless_model_is_refused_before_building(tmp_path):
    "A few-KB pqk checkpoint whose config asks for a million encoder blocks: refused by the config bounds, fast."
    import torch
    from pqk.models.dust3r import make_model
    m = make_model('tiny_linear')
    obj = {'pqk_format': 1, 'config': {**m.cfg.to_dict(), 'enc_depth': 1_000_000}, 'model': {}, 'meta': {}}
    ck = tmp_path / 'endless.pt'; torch.save(obj, ck)
    code = ('import sys; from pqk.models.checkpoints import load_checkpoint, CheckpointError\n'
            'try: load_checkpoint(sys.argv[1])\nexcept CheckpointError as e: print("REFUSED", e); sys.exit(3)')
    r = subprocess.run([sys.executable, '-c', code, str(ck)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and 'REFUSED' in r.stdout and 'enc_depth' in r.stdout and '1000000' in r.stdout, \
        r.stdout + r.stderr


# --- 2. one clear line instead of a traceback -------------------------------------------------------------------------

def test_non_utf8_card(tmp_path):
    p = tmp_path / 'card.md'
    p.write_bytes((ROOT / 'taskcards' / 'E0_eval_teacher.md').read_bytes().replace(b'goal:', b'goal: caf\xe9'))
    one_clear_line(pqk('run', p, '--runs-dir', tmp_path / 'runs'), 'card.md', 'UTF-8')
    assert not (tmp_path / 'runs').exists() or not any((tmp_path / 'runs').iterdir()), 'nothing runs'


def test_invalid_param_yaml(tmp_path):
    r = pqk('run', ROOT / 'taskcards' / 'E0_eval_teacher.md', '--runs-dir', tmp_path / 'runs', '--param', 'steps=[4')
    one_clear_line(r, '--param', 'steps')
    assert not (tmp_path / 'runs').exists() or not any((tmp_path / 'runs').iterdir())


def test_debug_shows_the_traceback(tmp_path):
    r = pqk('--debug', 'run', ROOT / 'taskcards' / 'E0_eval_teacher.md', '--runs-dir', tmp_path / 'r', '--param', 'x=[')
    assert r.returncode != 0 and 'Traceback' in r.stderr, r.stdout + r.stderr


def test_runs_folder_that_is_a_file(tmp_path):
    runs = tmp_path / 'runs'; runs.write_text('not a folder')
    one_clear_line(pqk('aggregate', '--runs-dir', runs, '--reports-dir', tmp_path / 'reports'), str(runs))


def test_reports_folder_that_cannot_be_written(tmp_path):
    "A reports path below a file (an OS error root cannot bypass, unlike a read-only folder)."
    from synthetic_runs import make_runs
    make_runs(tmp_path / 'runs', 3)
    blocker = tmp_path / 'blocker'; blocker.write_text('x')
    one_clear_line(pqk('aggregate', '--runs-dir', tmp_path / 'runs', '--reports-dir', blocker / 'reports'), 'blocker')


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders; the case above covers OS errors')
def test_read_only_reports_folder(tmp_path):
    from synthetic_runs import make_runs
    make_runs(tmp_path / 'runs', 3)
    rep = tmp_path / 'reports'; rep.mkdir(); rep.chmod(0o555)
    try: one_clear_line(pqk('aggregate', '--runs-dir', tmp_path / 'runs', '--reports-dir', rep), 'reports')
    finally: rep.chmod(0o755)


# --- 3. bad runs are never reported as passed -------------------------------------------------------------------------

def _workload(tmp: Path, **data_eval) -> Path:
    "The project's workload contract with the eval data replaced (first line, the version comment, kept)."
    src = (CFG / 'workload.yaml').read_text(); d = yaml.safe_load(src)
    d['data']['eval'] = {**d['data']['eval'], **data_eval}
    p = tmp / 'workload.yaml'; p.write_text(src.splitlines()[0] + '\n' + yaml.safe_dump(d, sort_keys=False)); return p


def _manifest(tmp: Path, size: int = 64, valid: bool = True) -> Path:
    "A two-view manifest scene; depth all zeros (no valid pixel) when `valid` is False."
    from PIL import Image
    rng = np.random.default_rng(0); views = []
    for v in range(2):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(tmp / f'im{v}.png')
        np.save(tmp / f'd{v}.npy', np.full((size, size), 2.0 if valid else 0.0, np.float32))
        pose = np.eye(4); pose[0, 3] = 0.1 * v
        views.append({'image': f'im{v}.png', 'depth': f'd{v}.npy',
                      'intrinsics': [[size, 0, size / 2], [0, size, size / 2], [0, 0, 1]], 'cam2world': pose.tolist()})
    mf = tmp / 'manifest.json'; mf.write_text(json.dumps({'version': 1, 'scenes': [{'name': 's0', 'views': views}]}))
    return mf


def test_nan_checkpoint_fails_with_the_reason(tmp_path):
    import torch
    from pqk.models.dust3r import make_model
    from pqk.models.checkpoints import save_checkpoint
    m = make_model('tiny_dpt')
    with torch.no_grad(): m.enc_blocks[0].attn.qkv.weight.fill_(float('nan'))
    save_checkpoint(m, tmp_path / 'nan.pt')
    r = pqk('run-eval', '--ckpt', tmp_path / 'nan.pt', '--runs-dir', tmp_path / 'runs', '--no-aggregate')
    log = the_log(tmp_path / 'runs')
    assert log['status'] != 'passed' and log['status'] in ('failed', 'error'), log['status']
    why = log.get('reason') or ''
    assert 'NaN or inf' in why and 'enc_blocks.0.attn.qkv.weight' in why, why
    assert r.returncode != 0 or log['status'] == 'failed', r.stdout[-2000:]


def test_eval_set_without_a_valid_pixel_fails_with_the_count(tmp_path):
    wl = _workload(tmp_path, source='manifest', paths=[str(_manifest(tmp_path, valid=False))])
    pqk('run-eval', '--workload', wl, '--runs-dir', tmp_path / 'runs', '--no-aggregate')
    log = the_log(tmp_path / 'runs')
    why = log.get('reason') or ''
    assert log['status'] in ('failed', 'error') and '0 of' in why and 'pixels are valid' in why, (log['status'], why)


def test_tiny_image_is_a_clear_error(tmp_path):
    wl = _workload(tmp_path, source='manifest', paths=[str(_manifest(tmp_path, size=4))])
    pqk('run-eval', '--workload', wl, '--runs-dir', tmp_path / 'runs', '--no-aggregate')
    log = the_log(tmp_path / 'runs')
    why = log.get('reason') or ''
    assert log['status'] in ('failed', 'error') and 'im0.png' in why and '4' in why, (log['status'], why)


# --- 4. contracts cross-checked ----------------------------------------------------------------------------------------

def _card(tmp: Path, name: str, edit=lambda t: t) -> Path:
    p = tmp / name; p.write_text(edit((ROOT / 'taskcards' / 'A1_K_only.md').read_text())); return p


def test_method_config_of_another_kind(tmp_path):
    p = _card(tmp_path, 'card.md', lambda t: t.replace('configs/distill.yaml', str(CFG / 'eval.yaml')))
    one_clear_line(pqk('devcheck', '--card', p), 'card.md', 'eval.yaml', 'distill')


def test_duplicate_card_ids(tmp_path):
    a, b = _card(tmp_path, 'a.md'), _card(tmp_path, 'b.md')
    one_clear_line(pqk('devcheck', '--card', a, '--card', b), 'A1_K_only', 'a.md', 'b.md')


def test_draft_card_is_refused_without_force(tmp_path):
    p = _card(tmp_path, 'card.md', lambda t: t.replace('status: ready', 'status: draft'))
    one_clear_line(pqk('run', p, '--runs-dir', tmp_path / 'runs'), 'draft', '--force')
    assert not (tmp_path / 'runs').exists() or not any((tmp_path / 'runs').iterdir())


# --- 5. the project is found from any folder --------------------------------------------------------------------------

def test_aggregate_from_a_subfolder_gives_the_same_reports(tmp_path):
    from synthetic_runs import make_runs
    proj = tmp_path / 'proj'
    for d in ('configs', 'schemas'): shutil.copytree(ROOT / d, proj / d)
    shutil.copy(ROOT / 'pyproject.toml', proj); (proj / 'nbs' / 'deep').mkdir(parents=True)
    make_runs(proj / 'runs', 12)
    env = {k: v for k, v in os.environ.items() if k != 'PQK_ROOT'}
    summaries = []
    for cwd in (proj, proj / 'nbs' / 'deep'):
        shutil.rmtree(proj / 'reports', ignore_errors=True)
        r = pqk('aggregate', cwd=cwd, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        s = json.loads((proj / 'reports' / 'summary.json').read_text())
        summaries.append({k: v for k, v in s.items() if k not in ('generated', 'generated_utc', 'seconds')})
        assert not (cwd / 'reports').exists() or cwd == proj, 'reports written relative to the working directory'
    assert summaries[0]['n_runs'] == 12 and summaries[0] == summaries[1]


def test_run_into_a_runs_path_that_is_a_file(tmp_path):
    runs = tmp_path / 'runs'; runs.write_text('x')
    one_clear_line(pqk('run', ROOT / 'taskcards' / 'E0_eval_teacher.md', '--runs-dir', runs), str(runs), 'move it away')
