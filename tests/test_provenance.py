"""Provenance that cannot be bent by a path or an edited file (issue 20), through the `pqk` command with the tiny
templates in tests/templates/: confined paths (both ways), artefact hashes checked in a chain, verified and exclusive
resumes, names that are names, advice that works, stops that keep their numbers, one meaning per exit status.

Each case works in tmp_path (its runs folder, and an `outside/` sentinel folder whose files must be neither read nor
written) and asserts the exact error a user sees.
"""
import hashlib, json, re, shlex, signal, subprocess
from pathlib import Path

import pytest

from conftest import ROOT, pqk_argv, pqk_env, run_pqk, wait_until

NAME_RULE = 'expected a name matching ^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$'
SCHEMA_NAME = 'expected a string matching ^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$'


def card(folder: Path, cid: str, kind: str = 'eval', template: str = 'fake_run.ipynb', upstream: str = '',
         extra: str = '', budget: str = '0.05') -> Path:
    "A task card in `folder`; its configs and template are named relative to the project root."
    method = {'K': 'distill', 'Q': 'quant', 'KQ': 'quant', 'P': 'prune', 'KP': 'prune'}.get(kind)
    rule = 'quality_drop_q_only_pct' if kind == 'Q' else 'quality_drop_mainline_pct'
    p = folder / f'{cid}.md'
    p.write_text(f"""---
id: {cid}
kind: {kind}
goal: Exercise provenance checks with a fake template.
configs:
  workload: configs/workload.yaml
  eval: configs/eval.yaml
{f'  method: configs/{method}.yaml' if method else ''}
thresholds:
  quality_drop_pct: eval.thresholds.{rule}
exceptions: []
stop_loss: eval.stop_loss.gpu_hours_over_budget_ratio
gpu_hours_budget: {budget}
expected_duration: 5 s
status: ready
template: tests/templates/{template}
{upstream}{extra}---
# {cid}
""")
    return p


def logs(runs: Path, cid: str) -> list:
    "(run folder, log) of every run of card `cid` that has a log, oldest first."
    out = []
    for d in sorted(runs.glob(f'{cid}-*')):
        if (d / 'log.json').is_file(): out.append((d, json.loads((d / 'log.json').read_text())))
    return out


def sha(p: Path) -> str: return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def fake_run_folder(parent: Path, run_id: str, status='passed', art=b'weights') -> Path:
    "A run folder with a log that records the sha256 of its student_best.pt (as a real run's log does)."
    d = parent / run_id; d.mkdir(parents=True)
    (d / 'student_best.pt').write_bytes(art)
    (d / 'log.json').write_text(json.dumps({'status': status, 'error': None, 'started_utc': '2026-01-01T00:00:00Z',
                                            'artifact_hashes': {'student_best.pt': {
                                                'sha256': hashlib.sha256(art).hexdigest(), 'bytes': len(art),
                                                'hashed': 'written'}}}))
    return d


# --- 2. artefact hashes at birth, checked at use: the chain A1 -> KQ_D1 ---------------------------------------------

@pytest.mark.slow
def test_chain_logs_the_verified_hash_and_refuses_an_edited_upstream(tmp_path, pqk_cmd):
    runs = tmp_path / 'runs'
    a1 = card(tmp_path, 'A1x', 'K', 'fake_chain.ipynb')
    kq = card(tmp_path, 'KQx', 'KQ', 'fake_chain.ipynb', upstream='upstream: {card: A1x}\n')
    r = pqk_cmd('run', a1, '--runs-dir', runs, '--no-aggregate', '--param', 'torch_save=true')
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    [(a1d, a1log)] = logs(runs, 'A1x')
    born = a1log['artifact_hashes']['student_best.pt']
    assert born['hashed'] == 'written' and born['sha256'] == sha(a1d / 'student_best.pt'), born   # hashed by the writer
    assert a1log['artifact_hashes']['config/workload.yaml']['hashed'] == 'written'
    # a newer A1x run that failed is not what `latest` takes; the log says which run was taken and why
    r = pqk_cmd('run', a1, '--runs-dir', runs, '--no-aggregate', '--param', 'drop=9')
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    failed_id = logs(runs, 'A1x')[-1][0].name

    r = pqk_cmd('run', kq, '--runs-dir', runs, '--no-aggregate')
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    [(kqd, kqlog)] = logs(runs, 'KQx')
    up = kqlog['upstream'][0]
    assert (up['run_id'], up['verified'], up['sha256'], up['recorded_sha256']) == (a1d.name, True, born['sha256'],
                                                                                  born['sha256']), up
    assert up['why'] == f'the newest passed run of A1x; newer runs skipped: {failed_id} (status failed)', up['why']
    assert kqlog['model']['checkpoint'] == str(a1d / 'student_best.pt')

    (a1d / 'student_best.pt').write_bytes((a1d / 'student_best.pt').read_bytes() + b'edited')   # tamper upstream
    now = sha(a1d / 'student_best.pt')
    r = pqk_cmd('run', kq, '--runs-dir', runs, '--no-aggregate')
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    d, rec = logs(runs, 'KQx')[-1]
    assert d != kqd and rec['status'] == 'failed'
    assert (f'upstream.artifact: got \'{a1d.name}/student_best.pt\'; expected the file its run wrote: its sha256 is '
            f'now {now} but the log of {a1d.name} recorded {born["sha256"]}') in rec['error'], rec['error']
    assert now in rec['reason'] and born['sha256'] in rec['reason']
    assert rec['upstream'] == [{'run_id': a1d.name, 'card': 'A1x', 'artifact': 'student_best.pt', 'sha256': now,
                                'recorded_sha256': born['sha256'], 'verified': False, 'status': 'passed',
                                'why': up['why']}], rec['upstream']
    assert not (d / 'KQx.ipynb').exists() and not (d / 'student_best.pt').exists(), 'nothing downstream ran'


def test_upstream_log_without_hashes_is_refused(tmp_path, pqk_cmd):
    runs = tmp_path / 'runs'
    card(tmp_path, 'Kc', 'K', 'fake_chain.ipynb')                     # the upstream card (devcheck wants it)
    d = fake_run_folder(runs, 'Kc-20260101T000000Z-abcdef')
    rec = json.loads((d / 'log.json').read_text()); del rec['artifact_hashes']
    (d / 'log.json').write_text(json.dumps(rec))
    q = card(tmp_path, 'Qc', 'KQ', 'fake_chain.ipynb', upstream='upstream: {card: Kc}\n')
    r = pqk_cmd('run', q, '--runs-dir', runs, '--no-aggregate')
    assert r.returncode == 1, r.stderr[-2000:]
    [(_, log)] = logs(runs, 'Qc')
    assert ("an artefact whose sha256 the log of run Kc-20260101T000000Z-abcdef records (it records none: a run from "
            "before pqk hashed its artefacts") in log['error'], log['error']
    assert log['upstream'][0]['recorded_sha256'] is None and log['upstream'][0]['verified'] is False


# --- 1. confinement, both ways -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_upstream_paths_stay_in_the_runs_folder(tmp_path, pqk_cmd, sentinel):
    runs = tmp_path / 'runs'; runs.mkdir()
    card(tmp_path, 'Kc', 'K', 'fake_chain.ipynb')
    out = fake_run_folder(sentinel.folder, 'Kc-20260101T000000Z-abcdef', art=b'outside weights')
    sentinel.age()
    cases = [('upstream: {card: Kc, run: ../outside/Kc-20260101T000000Z-abcdef}\n', 'upstream.run',
              f"got '../outside/Kc-20260101T000000Z-abcdef'; {SCHEMA_NAME}"),
             (f'upstream: {{card: Kc, artifact: {out}/student_best.pt}}\n', 'upstream.artifact',
              'expected a relative path inside the upstream run folder (no absolute path, no ..)'),
             ('upstream: {card: Kc, artifact: ../outside/x.pt}\n', 'upstream.artifact',
              "got '../outside/x.pt'; expected a relative path inside the upstream run folder (no absolute path, "
              "no ..)")]
    for i, (up, field, words) in enumerate(cases):
        q = card(tmp_path, f'Q{i}', 'KQ', 'fake_chain.ipynb', upstream=up)
        r = pqk_cmd('run', q, '--runs-dir', runs, '--no-aggregate')
        assert r.returncode == 2 and f'Q{i}.md: {field}: got ' in r.stderr and words in r.stderr, r.stderr
        assert 'Traceback' not in r.stderr
    assert list(runs.iterdir()) == [], 'nothing ran'
    # a run folder that is a symlink out of the runs folder: not followed, whether named or found as `latest`
    (runs / 'Kc-20260101T000000Z-abcdef').symlink_to(out, target_is_directory=True)
    q = card(tmp_path, 'Qn', 'KQ', 'fake_chain.ipynb',
             upstream='upstream: {card: Kc, run: Kc-20260101T000000Z-abcdef}\n')
    r = pqk_cmd('run', q, '--runs-dir', runs, '--no-aggregate')
    [(d, log)] = logs(runs, 'Qn')
    assert r.returncode == 1 and log['status'] == 'failed', r.stderr[-2000:]
    assert ("upstream.run: got 'Kc-20260101T000000Z-abcdef'; expected a path inside the runs folder "
            f"{runs} after resolving symlinks (it resolves to {out.resolve()})") in log['error'], log['error']
    assert not (d / 'Qn.ipynb').exists()
    q = card(tmp_path, 'Ql', 'KQ', 'fake_chain.ipynb', upstream='upstream: {card: Kc}\n')
    r = pqk_cmd('run', q, '--runs-dir', runs, '--no-aggregate')
    [(_, log)] = logs(runs, 'Ql')
    assert 'runs seen: Kc-20260101T000000Z-abcdef (a symlink out of the runs folder)' in log['error'], log['error']
    # an artefact that is a symlink out of its (real) run folder
    (runs / 'Kc-20260101T000000Z-abcdef').unlink()
    inside = fake_run_folder(runs, 'Kc-20260102T000000Z-abcdef')
    (inside / 'student_best.pt').unlink(); (inside / 'student_best.pt').symlink_to(out / 'student_best.pt')
    q = card(tmp_path, 'Qa', 'KQ', 'fake_chain.ipynb',
             upstream='upstream: {card: Kc, run: Kc-20260102T000000Z-abcdef}\n')
    r = pqk_cmd('run', q, '--runs-dir', runs, '--no-aggregate')
    [(_, log)] = logs(runs, 'Qa')
    assert r.returncode == 1 and ("upstream.artifact: got 'student_best.pt'; expected a relative path inside run "
                                  f"folder {inside} (no absolute path, no ..), symlinks resolved") in log['error'], log
    sentinel.check()


def test_card_paths_stay_in_the_project(tmp_path, pqk_cmd, sentinel):
    runs = tmp_path / 'runs'
    for name in ('workload.yaml', 'eval.yaml'):
        (sentinel.folder / name).write_text((ROOT / 'configs' / name).read_text())
    (sentinel.folder / 'w.pt').write_bytes(b'w'); (sentinel.folder / 'tpl.ipynb').write_text('{}')
    sentinel.age()
    o = sentinel.folder
    cases = [('  eval: configs/eval.yaml', f'  eval: {o}/eval.yaml', 'configs.eval', f'{o}/eval.yaml'),
             ('  workload: configs/workload.yaml', '  workload: ../outside/workload.yaml', 'configs.workload',
              '../outside/workload.yaml'),
             ('status: ready', f'status: ready\ncheckpoint: {o}/w.pt', 'checkpoint', f'{o}/w.pt'),
             ('template: tests/templates/fake_run.ipynb', f'template: {o}/tpl.ipynb', 'template', f'{o}/tpl.ipynb')]
    for i, (old, new, field, value) in enumerate(cases):
        c = card(tmp_path, f'P{i}')
        assert old in c.read_text(); c.write_text(c.read_text().replace(old, new))
        r = pqk_cmd('run', c, '--runs-dir', runs)
        assert r.returncode == 2, r.stdout + r.stderr
        assert (f"P{i}.md: {field}: got '" in r.stderr and "expected a path inside the project root after resolving "
                f"symlinks (it resolves to {(ROOT / value).resolve()})" in r.stderr), r.stderr
        assert 'Traceback' not in r.stderr
    assert not runs.exists(), 'nothing ran'
    sentinel.check()


@pytest.mark.slow
def test_a_symlink_inside_the_project_that_points_out(tmp_project, pqk_cmd, sentinel):
    (sentinel.folder / 'eval.yaml').write_text((ROOT / 'configs' / 'eval.yaml').read_text()); sentinel.age()
    (tmp_project / 'configs' / 'mine.yaml').symlink_to(sentinel.folder / 'eval.yaml')
    c = card(tmp_project / 'taskcards', 'P8')
    c.write_text(c.read_text().replace('eval: configs/eval.yaml', 'eval: configs/mine.yaml'))
    r = pqk_cmd('run', c, '--runs-dir', tmp_project / 'runs', project=tmp_project)
    assert r.returncode == 2 and ("P8.md: configs.eval: got 'configs/mine.yaml'; expected a path inside the project "
                                  f"root after resolving symlinks (it resolves to {sentinel.folder / 'eval.yaml'})") \
        in r.stderr, r.stderr
    # the same card without the link runs in that project (its paths are inside)
    c.write_text(c.read_text().replace('eval: configs/mine.yaml', 'eval: configs/eval.yaml'))
    r = pqk_cmd('run', c, '--runs-dir', tmp_project / 'runs', '--no-aggregate', project=tmp_project)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    [(d, log)] = logs(tmp_project / 'runs', 'P8')
    assert log['contracts']['eval']['path'] == 'configs/eval.yaml'
    sentinel.check()


def test_resume_stays_in_the_runs_folder(tmp_path, pqk_cmd, sentinel):
    runs = tmp_path / 'runs'; runs.mkdir()
    c = card(tmp_path, 'E9_fake')
    out = sentinel.folder / 'E9_fake-20260101T000000Z-abcdef'; out.mkdir()
    (out / 'log.json').write_text(json.dumps({'status': 'stopped'})); (out / 'E9_fake.ipynb').write_text('{}')
    sentinel.age()
    r = pqk_cmd('run', c, '--runs-dir', runs, '--resume', f'../outside/{out.name}')
    assert r.returncode == 2 and f"--resume ../outside/{out.name}: run id: got '../outside/{out.name}'; {NAME_RULE}" \
        in r.stderr, r.stderr
    (runs / out.name).symlink_to(out, target_is_directory=True)
    r = pqk_cmd('run', c, '--runs-dir', runs, '--resume', out.name)
    assert r.returncode == 2 and (f"--resume {out.name}: run: got '{out.name}'; expected a path inside the runs "
                                  f"folder {runs} after resolving symlinks (it resolves to {out})") in r.stderr, \
        r.stderr
    assert not (out / 'attempts').exists()
    sentinel.check()


# --- 4. identifiers are names --------------------------------------------------------------------------------------

def test_card_ids_are_names_and_unique_in_their_folder(tmp_path, pqk_cmd):
    runs = tmp_path / 'runs'
    c = card(tmp_path, 'N1'); c.write_text(c.read_text().replace('id: N1', 'id: "../N1"'))
    r = pqk_cmd('run', c, '--runs-dir', runs)
    assert r.returncode == 2 and f"N1.md: id: got '../N1'; {SCHEMA_NAME}" in r.stderr, r.stderr
    c.write_text(c.read_text().replace('id: "../N1"', 'id: ' + 'n' * 97))
    r = pqk_cmd('run', c, '--runs-dir', runs)
    assert r.returncode == 2 and 'N1.md: id: got ' in r.stderr and 'expected a card id of at most 96 characters' \
        in r.stderr, r.stderr
    d = tmp_path / 'cards'; d.mkdir()
    a, b = card(d, 'D1'), card(d, 'D1_copy'); b.write_text(b.read_text().replace('id: D1_copy', 'id: D1'))
    r = pqk_cmd('run', a, '--runs-dir', runs)
    assert r.returncode == 2 and (f"{a}: id: got 'D1'; expected a card id no other card in its folder uses (also in "
                                  f"{b})") in r.stderr, r.stderr
    assert not runs.exists()


# --- 3. resume verifies what it resumes; one writer per run folder; 10. advice that works; 11. stops ---------------

def _stopped_run(tmp_path, c, runs, *extra, env=None) -> tuple:
    "Start a fake_stop run, SIGTERM it once it sleeps; return (exit status, run folder, log, its stdout and stderr)."
    with open(tmp_path / 'out.txt', 'w') as f:
        p = subprocess.Popen(pqk_argv('run', c, '--runs-dir', runs, '--no-aggregate', *extra), cwd=ROOT,
                             env=pqk_env(**(env or {})), stdout=f, stderr=subprocess.STDOUT)
        wait_until(lambda: list(runs.glob('*/started.marker')), 'template start', p, 120)
        p.send_signal(signal.SIGTERM); p.wait(120)
    [(d, log)] = logs(runs, c.stem)
    return p.returncode, d, log, (tmp_path / 'out.txt').read_text()


def _advised(reason: str) -> list:
    "The arguments of the `pqk` command a stopped log advises."
    m = re.search(r'continue it with `(pqk [^`]+)`', reason)
    assert m, reason
    argv = shlex.split(m[1]); assert argv[0] == 'pqk'
    return argv[1:]


@pytest.mark.slow
def test_stop_keeps_numbers_and_the_advice_resumes(tmp_path):
    runs = tmp_path / 'runs'
    c = card(tmp_path, 'S1_stop', 'K', 'fake_stop.ipynb')
    rc, d, log, out = _stopped_run(tmp_path, c, runs)
    assert rc == 4 and log['status'] == 'stopped', out[-3000:]
    assert log['reason'].startswith('stopped by SIGTERM while the template was running; its kernel was asked to stop '
                                    '(SIGTERM) and ended'), log['reason']
    assert log['quality']['metrics'] == {'delta_1.25': 0.8765} and log['training'] == {'steps_done': 7,
                                                                                       'final_loss': 0.123}, log
    assert f'continue it with `pqk run {c} --resume {d.name} --runs-dir {runs}`' in log['reason'], log['reason']
    r = run_pqk(*_advised(log['reason']))
    [(d2, log2)] = logs(runs, 'S1_stop')
    assert r.returncode == 0 and d2 == d and log2['status'] == 'passed', r.stdout[-2000:] + r.stderr[-2000:]
    assert log2['resume']['count'] == 1 and log2['resume']['previous'][0]['status'] == 'stopped'
    assert (d / 'resumed.marker').is_file() and log2['training']['status'] == 'completed'


@pytest.mark.slow
def test_sigterm_is_forwarded_and_the_template_records_what_it_has(tmp_path):
    runs = tmp_path / 'runs'
    c = card(tmp_path, 'S2_stop', 'K', 'fake_stop.ipynb')
    rc, d, log, out = _stopped_run(tmp_path, c, runs, '--param', 'handle_term=true')
    assert rc == 4 and log['status'] == 'stopped', out[-3000:]
    assert log['reason'].startswith('stopped by SIGTERM while the template was running; its kernel was asked to stop '
                                    '(SIGTERM) and the notebook finished; the template said stopped: training stopped '
                                    '(SIGTERM): checkpoint written; continue it with `'), log['reason']
    assert log['training'] == {'steps_done': 8, 'final_loss': 0.1, 'status': 'stopped'}      # recorded after the stop
    assert log['efficiency']['latency_p50_ms'] == 5.0
    assert not [w for w in ('Traceback', 'ZMQError', 'without encryption') if w in out], out[-3000:]


NOISE = ('Traceback', 'ZMQError', 'without encryption', 'KeyboardInterrupt caught', 'Kernel died')

@pytest.mark.slow
def test_a_stop_mid_cell_prints_one_line_per_event_unless_debug(tmp_path):
    """No grace (the kernel is shut down while its cell still runs): the kernel's ZMQError traceback, its TCP warning
    and papermill's "Kernel died" are not printed; the run says it started, that it was stopped and where its record
    is. With --debug the same stop shows the kernel's traceback (the control: the stop does make one)."""
    c = card(tmp_path, 'S4_stop', 'K', 'fake_stop.ipynb')
    quick = {'PQK_STOP_GRACE_S': '0'}
    rc, d, log, out = _stopped_run(tmp_path, c, tmp_path / 'runs', '--param', 'handle_term=true', env=quick)
    assert rc == 4 and log['status'] == 'stopped', out[-3000:]
    assert not [w for w in NOISE if w in out], out[-3000:]
    lines = out.splitlines()
    assert lines[0].startswith(f'pqk run: {d.name}: started {c} (kind K, template fake_stop) in '), lines
    assert lines[-2].startswith(f'pqk run: {d.name}: STOPPED — stopped by SIGTERM'), lines
    assert lines[-1] == f'  record: {d}/ (log.json, S4_stop.ipynb, S4_stop.html)', lines
    rc, _, _, out = _stopped_run(tmp_path, c, tmp_path / 'debug', '--param', 'handle_term=true', '--debug', env=quick)
    assert rc == 4 and 'Traceback' in out and 'ZMQError' in out and 'without encryption' not in out, out[-3000:]


@pytest.mark.slow
def test_resume_refuses_edited_inputs_and_a_second_writer(tmp_path):
    runs = tmp_path / 'runs'
    c = card(tmp_path, 'S3_stop', 'K', 'fake_stop.ipynb')
    rc, d, log, out = _stopped_run(tmp_path, c, runs, '--param', 'resume_sleep_s=120')
    assert rc == 4, out[-3000:]
    resume = ['run', c, '--runs-dir', runs, '--no-aggregate', '--resume', d.name]
    run = lambda *a: run_pqk(*resume, *a)
    before = sorted(p.name for p in d.rglob('*'))
    for rel in ('config/eval.yaml', 'config/fake_stop.ipynb'):               # an edited copy inside the run folder
        f = d / rel; orig = f.read_bytes(); was = sha(f)
        f.write_bytes(orig.replace(b'0', b'1', 1)); now = sha(f)
        r = run()
        assert r.returncode == 2 and (f"--resume {d.name}: inputs.json: got '{rel}'; expected unchanged copies: {rel} "
                                      f"has sha256 {now} now, {was} when the run started") in r.stderr, r.stderr
        f.write_bytes(orig)
    r = run('--param', 'sleep_s=5')                                           # other overrides than the run's
    assert r.returncode == 2 and "--param: got {'sleep_s': 5}; expected the overrides the run started with " \
        "({'resume_sleep_s': 120})" in r.stderr, r.stderr
    assert sorted(p.name for p in d.rglob('*')) == before and json.loads((d / 'log.json').read_text()) == log
    # one writer per run folder: while a resume runs (it sleeps), a second one is refused at once
    with open(tmp_path / 'a.txt', 'w') as f:
        a = subprocess.Popen(pqk_argv(*resume), cwd=ROOT, env=pqk_env(), stdout=f, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: (d / 'resumed.marker').exists(), 'first resume', a, 120)
            r = run()
            assert r.returncode == 2 and (f"--resume {d.name}: run: got '{d.name}'; expected a run folder no other pqk "
                                          "process is writing") in r.stderr, r.stderr
        finally:
            a.send_signal(signal.SIGTERM); a.wait(240)
    final = json.loads((d / 'log.json').read_text())
    assert a.returncode == 4 and final['status'] == 'stopped', (tmp_path / 'a.txt').read_text()[-3000:]
    assert final['resume']['count'] == 1 and sorted(p.name for p in (d / 'attempts').iterdir()) == [
        'S3_stop.attempt1.html', 'S3_stop.attempt1.ipynb', 'log.attempt1.json']


@pytest.mark.slow
def test_method_command_stop_advises_its_own_resume(tmp_path):
    runs = tmp_path / 'runs'
    with open(tmp_path / 'out.txt', 'w') as f:
        p = subprocess.Popen(pqk_argv('run-eval', '--template', 'tests/templates/fake_stop.ipynb', '--runs-dir', runs,
                                      '--no-aggregate'), cwd=ROOT, env=pqk_env(), stdout=f, stderr=subprocess.STDOUT)
        wait_until(lambda: list(runs.glob('*/started.marker')), 'template start', p, 120)
        p.send_signal(signal.SIGINT); p.wait(120)
    [(d, log)] = logs(runs, 'adhoc-eval')
    assert p.returncode == 4 and log['status'] == 'stopped', (tmp_path / 'out.txt').read_text()[-3000:]
    assert log['reason'].startswith('stopped by SIGINT') and \
        f'continue it with `pqk run-eval --resume {d.name} --runs-dir {runs}`' in log['reason'], log['reason']
    r = run_pqk(*_advised(log['reason']))
    [(d2, log2)] = logs(runs, 'adhoc-eval')
    assert r.returncode == 0 and d2 == d and log2['status'] == 'passed', r.stdout[-2000:] + r.stderr[-2000:]
    assert log2['resume']['count'] == 1 and (d / 'resumed.marker').is_file()


# --- 13. one meaning per exit status and word ----------------------------------------------------------------------

@pytest.mark.slow
def test_exit_status_and_words(tmp_path, pqk_cmd):
    runs = tmp_path / 'runs'
    c = card(tmp_path, 'X1', 'K')
    r = pqk_cmd('run', c, '--runs-dir', runs, '--no-aggregate', '--param', 'drop=1.0', '--param', 'ci=1.0')
    [(d1, log)] = logs(runs, 'X1')
    assert r.returncode == 3 and log['status'] == 'inconclusive', r.stdout[-2000:]
    assert 'inconclusive: inconclusive:' not in log['reason'] + r.stdout, log['reason']
    # --param overrides are part of the config hash: the same card with other overrides gets another run id hash
    r = pqk_cmd('run', c, '--runs-dir', runs, '--no-aggregate', '--param', 'drop=1.0')
    d2, log2 = logs(runs, 'X1')[-1]
    assert r.returncode == 0 and log2['status'] == 'passed' and d1.name[-6:] != d2.name[-6:], r.stdout[-2000:]
    # over the stop-loss never passes (a budget of 36 ms of device time)
    s = card(tmp_path, 'X2', 'K', budget='0.00001')
    r = pqk_cmd('run', s, '--runs-dir', runs, '--no-aggregate', '--param', 'drop=1.0')
    [(_, log)] = logs(runs, 'X2')
    assert r.returncode == 1 and log['status'] == 'failed', r.stdout[-2000:]
    assert log['reason'].startswith('over the stop-loss: ') and 'PASSED' not in r.stdout, log['reason']
    assert 'the quality verdict alone: passed: quality drop 1% <= 1.5%' in log['reason'], log['reason']
