"""Rendering in several processes from a user's own script (a process boundary: how the children start).

A script without an `if __name__ == '__main__':` guard must render once: the children are forked, so they do not run
the script again. The control forces the spawn start method, under which each child runs the script from the top."""
import subprocess, sys

from conftest import pqk_env

SCRIPT = '''
import multiprocessing as mp
import pqk.data.scenes as S
if {spawn}: mp.get_all_start_methods = lambda: ['spawn']       # the control: children start by spawning
scenes = S.synthetic_dataset(7, 4, 2, 32, cache_dir=False, workers=2)
print('DONE', len(scenes), scenes[3]['name'])
'''


def _run(tmp_path, spawn: bool) -> subprocess.CompletedProcess:
    p = tmp_path / f'render_{int(spawn)}.py'
    p.write_text(SCRIPT.format(spawn=spawn))
    return subprocess.run([sys.executable, str(p)], cwd=tmp_path, env=pqk_env(), capture_output=True, text=True,
                          timeout=300)


def test_unguarded_script_renders_once(tmp_path):
    r = _run(tmp_path, spawn=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('DONE') == 1 and 'render processes failed' not in r.stderr, r.stdout + r.stderr[-3000:]
    c = _run(tmp_path, spawn=True)                  # control: spawned children run the unguarded script again
    assert c.stdout.count('DONE') > 1 or 'render processes failed' in c.stderr, c.stdout + c.stderr[-3000:]
    assert r.stdout.splitlines()[-1] == c.stdout.splitlines()[-1]        # the scenes are the same either way
