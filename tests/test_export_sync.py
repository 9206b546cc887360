"""The library is the export of the notebooks: `nbdev-export` on a copy of the repo leaves `pqk/` unchanged."""
import filecmp, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_nbdev_export_leaves_pqk_unchanged(tmp_path):
    dst = tmp_path / 'repo'
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns('.venv', '.git', 'runs', 'reports', '__pycache__', '*.egg-info'))
    exe = Path(sys.executable).with_name('nbdev-export')
    r = subprocess.run([str(exe) if exe.exists() else 'nbdev-export'], cwd=dst, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    def diff(a, b):
        c = filecmp.dircmp(a, b, ignore=['__pycache__'])
        out = [f'{a}/{f}' for f in c.diff_files + c.left_only + c.right_only]
        for s in c.common_dirs: out += diff(Path(a) / s, Path(b) / s)
        return out
    changed = diff(ROOT / 'pqk', dst / 'pqk')
    assert not changed, f'pqk/ is out of sync with nbs/ (run nbdev-export and commit): {changed}'
