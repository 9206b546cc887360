"""The `pqk` command where a process boundary matters (issue 20, classes 6, 9 and 15).

- `pqk lab`: the token is on no command line (the server's, pqk's, or any child's `/proc/<pid>/cmdline`, which every
  local user can read), yet the server takes it (from its private environment); SIGTERM, SIGINT or SIGHUP to pqk stop
  the server and its kernel: the port refuses connections and their pids are gone. In a project without the explorer
  notebook, `pqk lab` writes it (whole, with its kernel named) and prints its URL.
- `--ckpt demo` / `--ckpt teacher` reach every command's library call as something it can load.
- `pqk export --out` refuses a folder, another suffix, a file that is not an ONNX model and (without --force) an ONNX
  model, with the exact message, before anything is written; --force replaces an ONNX model; a SIGTERM mid-export
  leaves the old target and no temp file; a temp file of a dead pid is removed by the next export.

Deadlines below only bound the waits: nothing asserts how long anything took."""
import json, os, re, signal, socket, subprocess, sys, urllib.error, urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, pqk_argv, run_pqk, wait_until


# ---------------------------------------------------------------------------------------------------- pqk lab
def _children(pid: int) -> list[int]:
    "Every descendant of `pid` (from /proc/*/stat)."
    kids = {}
    for d in Path('/proc').iterdir():
        if not d.name.isdigit(): continue
        try: stat = (d / 'stat').read_text()
        except OSError: continue
        ppid = int(stat.rsplit(')', 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []): out.append(k); todo.append(k)
    return out


def _gone(pid: int) -> bool: return not Path(f'/proc/{pid}').exists()


def _mentioning(text: str) -> list[int]:
    "Processes whose command line contains `text` (to clean up after a failure)."
    out = []
    for d in Path('/proc').iterdir():
        try:
            if d.name.isdigit() and text.encode() in (d / 'cmdline').read_bytes(): out.append(int(d.name))
        except OSError: pass
    return out


def _refuses(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(('127.0.0.1', port)) != 0


def _get(url, token=None):
    req = urllib.request.Request(url, headers={'Authorization': f'token {token}'} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r: return r.status, r.read()
    except urllib.error.HTTPError as e: return e.code, b''
    except OSError: return None, b''                            # not listening (yet)


@pytest.mark.parametrize('sig', ['SIGTERM', pytest.param('SIGINT', marks=pytest.mark.slow),
                                 pytest.param('SIGHUP', marks=pytest.mark.slow)])
def test_lab_token_private_and_stop(tmp_path, sig):
    from pqk.run.explore import free_port, EXPLORER_NB, explorer_notebook
    if not Path('/proc/self/cmdline').exists(): pytest.skip('needs /proc')
    root = tmp_path / 'workbook'; (root / 'nbs').mkdir(parents=True); (tmp_path / 'home').mkdir()
    env = {**os.environ, 'HOME': str(tmp_path / 'home'), 'PQK_ROOT': str(root),
           **{f'JUPYTER_{k}_DIR': str(tmp_path / 'jupyter' / k.lower()) for k in ('CONFIG', 'DATA', 'RUNTIME')}}
    for k in ('PQK_LAB_TOKEN', 'JUPYTER_TOKEN', 'JUPYTER_TOKEN_FILE'): env.pop(k, None)
    port = free_port(20000 + os.getpid() % 5000)
    log = tmp_path / 'lab.log'
    with open(log, 'w') as out:
        p = subprocess.Popen(pqk_argv('lab', '--port', port), cwd=tmp_path, env=env, stdout=out,
                             stderr=subprocess.STDOUT)
    server = kernel = None
    try:
        head = wait_until(lambda: re.search(r'server pid (\d+).*\n  explorer: (\S+)', log.read_text()),
                          'pqk lab printed no server pid and URL', p, 180, log, poll=0.2)
        server, url = int(head[1]), head[2]
        assert f'/lab/tree/{EXPLORER_NB}?token=' in url, url             # it opens the researcher's explorer ...
        nb = json.loads((root / EXPLORER_NB).read_text())             # ... which it wrote: the workbook had none
        assert [''.join(c['source']) for c in nb['cells']] == [c['source'] for c in explorer_notebook()['cells']], nb
        assert nb['metadata']['kernelspec']['name'] == 'python3', nb['metadata']
        token = re.search(r'[?&]token=([0-9a-f]+)', url)[1]
        assert len(token) >= 32, url
        base = f'http://127.0.0.1:{port}'
        wait_until(lambda: _get(f'{base}/api/status', token)[0] == 200, 'the server never answered', p, 180, log, 0.2)
        assert _get(f'{base}/api/status')[0] in (401, 403)                      # without the token: refused
        assert _get(f'{base}/api/status', 'f' * 48)[0] in (401, 403)            # with another token: refused
        code, body = _get(f'{base}/api/kernelspecs', token)
        assert code == 200, body
        req = urllib.request.Request(f'{base}/api/kernels', data=b'{}', method='POST',
                                     headers={'Authorization': f'token {token}', 'Content-Type': 'application/json'})
        with urllib.request.urlopen(req, timeout=60) as r: assert r.status == 201
        def kernels():                         # the kernel itself, not a short-lived helper the server started first
            out = []
            for k in _children(server):
                try: cmd = Path(f'/proc/{k}/cmdline').read_bytes()
                except OSError: continue
                if b'ipykernel' in cmd: out.append(k)
            return out
        kernel = wait_until(kernels, 'no kernel process under the server', p, 120, log, 0.2)[0]
        # the right processes, and the token reached the server through its environment (readable by its user only)
        assert b'jupyterlab' in Path(f'/proc/{server}/cmdline').read_bytes()
        assert f'JUPYTER_TOKEN={token}'.encode() in Path(f'/proc/{server}/environ').read_bytes()
        procs = [p.pid, server, *_children(p.pid)]
        assert kernel in procs and len(procs) >= 3, procs
        for pid in procs:
            cmdline = Path(f'/proc/{pid}/cmdline').read_bytes()
            assert token.encode() not in cmdline, (pid, cmdline)
        p.send_signal(getattr(signal, sig))
        wait_until(lambda: p.poll() is not None, f'pqk lab still runs after {sig}', limit=120, poll=0.2)
        wait_until(lambda: _gone(server) and _gone(kernel) and _refuses(port),
                   f'the server (pid {server}), its kernel (pid {kernel}) or port {port} outlived pqk lab after {sig}',
                   limit=120, poll=0.2)
        assert p.returncode == 0, log.read_text()[-3000:]
    finally:                                           # on a failure: nothing of this test is left running
        for pid in {server, kernel, *_mentioning(str(root))} - {None}:
            if not _gone(pid) and pid != p.pid:
                try: os.kill(pid, signal.SIGKILL)
                except OSError: pass
        if p.poll() is None: p.kill(); p.wait(30)


# ---------------------------------------------------------------------------------------------------- --ckpt names
def test_ckpt_names_reach_the_library(tmp_path, monkeypatch):
    "`demo` and `teacher` reach run_method / bench / export as what they load, for every command with --ckpt."
    import pqk.run.runner, pqk.edge.bench, pqk.export.onnx, pqk.compress.quant
    from pqk.run.cli import main
    from pqk.models.teacher import demo_teacher_path
    got = {}
    monkeypatch.setattr(pqk.run.runner, 'run_method',
                        lambda method, **kw: got.update(ckpt=kw['ckpt']) or {'status': 'passed'})
    monkeypatch.setattr(pqk.edge.bench, 'bench', lambda ckpt, *a, **kw: got.update(ckpt=ckpt))
    monkeypatch.setattr(pqk.export.onnx, 'export_checkpoint', lambda ckpt, *a, **kw: got.update(ckpt=ckpt) or {})
    monkeypatch.setattr(pqk.compress.quant, 'export_int8', lambda ckpt, *a, **kw: got.update(ckpt=ckpt) or {})
    demo = str(demo_teacher_path())
    wl = tmp_path / 'workload.yaml'                      # a workload whose teacher is a checkpoint, not the demo
    text = (ROOT / 'configs' / 'workload.yaml').read_text()
    assert re.search(r'(?m)^  checkpoint: demo\b', text)
    wl.write_text(re.sub(r'(?m)^  checkpoint: demo\b', '  checkpoint: models/big_teacher.pt', text))

    def ckpt_of(*argv):
        got.clear()
        assert main(list(map(str, argv))) == 0
        return got['ckpt']
    cmds = {'run-eval': [], 'run-distill': [], 'run-quant': [], 'run-prune': [], 'edge-eval': [],
            'bench': ['--no-compile'], 'export': ['--out', tmp_path / 'm.onnx'],
            'export-int8': ['--out', tmp_path / 'q.onnx', '--precision', 'int8']}
    for cmd, extra in cmds.items():
        cmd = cmd.split('-int8')[0]
        common = [cmd, *extra] + (['--no-aggregate', '--runs-dir', tmp_path / 'runs'] if cmd != 'bench'
                                  and cmd != 'export' else [])
        assert ckpt_of(*common, '--ckpt', 'demo') == demo, cmd
        teacher = ckpt_of(*common, '--ckpt', 'teacher', '--workload', wl)
        if cmd in ('run-distill', 'export'):           # their default is not the workload's teacher: named here
            assert teacher == str(ROOT / 'models' / 'big_teacher.pt'), (cmd, teacher)
        else:
            assert teacher is None, (cmd, teacher)     # None is these commands' workload teacher
        path = ckpt_of(*common, '--ckpt', 'ck/student.pt')
        assert path == (str(Path('ck/student.pt').resolve()) if cmd in ('edge-eval', 'bench') else 'ck/student.pt')
    assert not (tmp_path / 'runs').exists() and not list(tmp_path.glob('*.onnx'))


@pytest.mark.slow
def test_edge_eval_ckpt_demo(tmp_path):
    "The real command: `pqk edge-eval --ckpt demo` times the demo teacher (it failed with '<cwd>/demo' before)."
    import json
    r = run_pqk('edge-eval', '--ckpt', 'demo', '--no-aggregate', '--min-pairs', '2', '--min-seconds', '0',
                '--power-sampler', 'none', '--runs-dir', tmp_path / 'runs', '--log', tmp_path / 'e.json', timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rec = json.loads((tmp_path / 'e.json').read_text())
    assert rec['status'] == 'passed' and rec['edge_device']['timed_pairs'] >= 2, rec['reason']
    assert rec['model']['checkpoint'].endswith('demo_teacher') and rec['model']['name'] == 'demo_teacher'


# ---------------------------------------------------------------------------------------------------- pqk export --out
def _tiny_onnx(path: Path) -> bytes:
    "A small valid ONNX model (Identity), standing for a model the user already has at --out."
    import onnx
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node('Identity', ['x'], ['y'])], 'old',
                          [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(g), str(path))
    return path.read_bytes()


def _state(d: Path) -> dict:
    "Every file under `d`: (bytes, mtime_ns)."
    return {str(p.relative_to(d)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.rglob('*')) if p.is_file()}


def _export(*argv, timeout=600): return run_pqk('export', *argv, timeout=timeout)


def test_export_refuses_a_destructive_out(tmp_path):
    d = tmp_path / 'out'; d.mkdir()
    (d / 'notes.onnx').write_text('my notes, not a model\n')
    (d / 'keep').mkdir(); (d / 'keep' / 'a.txt').write_text('a')
    _tiny_onnx(d / 'model.onnx')
    before = _state(tmp_path)
    want = 'expected the path of an ONNX file to write (ending in .onnx)'
    cases = [([d / 'keep'], f"--out '{d / 'keep'}': is a folder; {want}"),
             ([d / 'model.txt'], f"--out '{d / 'model.txt'}': does not end in .onnx; {want}"),
             ([d / 'notes.onnx', '--force'], f"--out '{d / 'notes.onnx'}': is a file that is not an ONNX model "
              "(left unchanged); expected a new path, or an ONNX model to replace with --force"),
             ([d / 'model.onnx'], f"--out '{d / 'model.onnx'}': an ONNX model exists there (left unchanged); "
              "expected a new path, or --force to replace it")]
    for (out, *extra), msg in cases:
        r = _export('--ckpt', 'demo', '--out', out, *extra)
        assert (r.returncode, r.stderr.strip(), r.stdout) == (2, f'pqk export: {msg}', ''), r.stderr[-2000:]
        assert _state(tmp_path) == before, out                           # nothing created, nothing changed


@pytest.mark.slow
def test_export_force_replaces_an_onnx_and_removes_dead_temps(tmp_path):
    import onnx
    d = tmp_path / 'out'; d.mkdir()
    old = _tiny_onnx(d / 'model.onnx')
    gone = subprocess.Popen([sys.executable, '-c', 'pass']); gone.wait()          # a writer that no longer runs
    stale, live = d / f'.tmp-{gone.pid}-k1ll3d-model.onnx', d / f'.tmp-{os.getpid()}-l1v3-model.onnx'
    stale.write_bytes(b''); live.write_bytes(b'')
    r = _export('--ckpt', 'demo', '--out', d / 'model.onnx', '--force')
    assert r.returncode == 0, r.stderr[-3000:]
    new = (d / 'model.onnx').read_bytes()
    assert new != old and [i.name for i in onnx.load(str(d / 'model.onnx')).graph.input] == ['img1', 'img2']
    assert not stale.exists() and live.exists()                 # the dead pid's temp removed, a live writer's kept
    assert sorted(p.name for p in d.glob('.tmp-*')) == [live.name]


@pytest.mark.slow
def test_export_sigterm_leaves_the_old_target_and_no_temp(tmp_path):
    d = tmp_path / 'out'; d.mkdir()
    old = _tiny_onnx(d / 'model.onnx')
    log = tmp_path / 'export.log'
    with open(log, 'w') as out:
        p = subprocess.Popen(pqk_argv('export', '--ckpt', 'demo', '--out', d / 'model.onnx', '--force'),
                             cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: list(d.glob(f'.tmp-{p.pid}-*')), 'the export never made its temp file', p, 300, log, 0.2)
        p.send_signal(signal.SIGTERM)
        assert p.wait(120) == 130, log.read_text()[-3000:]
    finally:
        if p.poll() is None: p.kill(); p.wait(30)
    assert 'pqk export: interrupted' in log.read_text()
    assert (d / 'model.onnx').read_bytes() == old
    assert sorted(x.name for x in d.iterdir()) == ['model.onnx']          # no temp, no polygraphy file
