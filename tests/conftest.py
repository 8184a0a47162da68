import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mriseg.archive import write_archive

ROOT = Path(__file__).resolve().parents[1]
SHARED_IBSR = ROOT.parent / "shared" / "data" / "ibsr18-dev"
PROJECT_FILES = ["dvc.yaml", "params.yaml", "stages", "src", ".dvcignore"]


def synthetic_pair(rng, h=48, w=40):
    """A toy 'brain': an ellipse of white matter inside a ring of gray matter, with noise."""
    yy, xx = np.mgrid[:h, :w]
    cy, cx = h / 2 + rng.uniform(-3, 3), w / 2 + rng.uniform(-3, 3)
    ry, rx = rng.uniform(0.3, 0.42) * h, rng.uniform(0.3, 0.42) * w
    r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    mask = np.full((h, w), 2, np.uint8)
    mask[r < 1] = 1
    mask[r < 0.45] = 0
    image = np.choose(mask, [0.9, 0.55, 0.02]).astype(np.float32) + rng.normal(0, 0.03, (h, w)).astype(np.float32)
    return np.clip(image, 0, 1), mask


def make_tiny_archive(path, n=24, h=48, w=40, seed=0, name="img"):
    rng = np.random.default_rng(seed)
    pairs = [(f"{name}_{i}.npy", *synthetic_pair(rng, h, w)) for i in range(n)]
    write_archive(path, pairs)
    return path


@pytest.fixture
def tiny_archive(tmp_path):
    return make_tiny_archive(tmp_path / "tiny.zip")


def run(cmd, cwd, check=True, env=None, timeout=900):
    if isinstance(cmd, list) and cmd[0] == "dvc":  # the dvc of this interpreter, whatever PATH says
        cmd = [sys.executable, "-m", "dvc", *cmd[1:]]
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout,
                       shell=isinstance(cmd, str))
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def make_project(dest, params_override=None):
    """A copy of the DVC project in a fresh git repository, as a user's clone would be."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            shutil.copy(src, dest / name)
    shutil.copy(ROOT / ".gitignore", dest / ".gitignore")
    if params_override:
        set_params(dest, params_override)
    run(["git", "init", "-q"], dest)
    run(["git", "config", "user.email", "test@example.com"], dest)
    run(["git", "config", "user.name", "test"], dest)
    run(["dvc", "init", "-q"], dest)
    run(["dvc", "config", "core.analytics", "false"], dest)
    run("git add -A && git commit -qm init", dest)
    return dest


def set_params(project, overrides):
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    for key, value in overrides.items():
        node = params
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch):
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")


NORM = {"method": "percentile", "low": 0.5, "high": 99.5}


def mriseg_console(*args, cwd=None):
    """The mriseg command line as a user runs it: a new process (each test file keeps one such run per command)."""
    return subprocess.run([sys.executable, "-m", "mriseg", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def mriseg(*args, cwd=None):
    """The mriseg command line run in this process (cli.main, the console script's function), without the 3-5 s
    a new process takes to import torch: exit code, stdout and stderr as mriseg_console gives them."""
    import contextlib
    import io

    from mriseg import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(cwd or "."):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return subprocess.CompletedProcess(["mriseg", *map(str, args)], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A UNet trained for a few epochs on tiny synthetic axial slices (1 mm), single-slice input."""
    import test_training

    tmp = tmp_path_factory.mktemp("ckpt")
    ckpt = test_training.train({**test_training.CFG, "epochs": 8}, "unet", test_training.dataset(test_training.TRAIN),
                               {"test": test_training.dataset(test_training.TEST)}, tmp / "model.pt", tmp / "resume.pt",
                               extra={"axis": "axial", "normalization": NORM, "pixel_size_mm": [1.0, 1.0]})
    assert ckpt["history"][-1]["test_dice_white_matter"] > 0.8
    return tmp / "model.pt"


def synthetic_volume(rng, shape=(40, 44, 36), zooms=(1.0, 1.0, 1.0)):
    """A toy labelled head (IBSR's labels: 0 background, 1 CSF, 2 gray matter, 3 white matter): an
    ellipsoid of white matter in a bumpy shell of gray matter and a rim of CSF; a T1-like int16 image."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    centre = rng.uniform(-0.08, 0.08, 3)[:, None, None, None]
    radius = rng.uniform(0.62, 0.78, 3)[:, None, None, None]
    r = np.sqrt((((grid - centre) / radius) ** 2).sum(0))
    bumps = 0.06 * np.sin(6 * grid[0] + rng.uniform(0, 6)) * np.cos(5 * grid[1] + rng.uniform(0, 6))
    labels = np.zeros(shape, np.uint8)
    labels[r < 1.0] = 1
    labels[r < 0.9 + bumps] = 2
    labels[r < 0.6 + bumps] = 3
    image = np.choose(labels, [0.0, 40.0, 110.0, 170.0]) + rng.normal(0, 6, shape) * (labels > 0)
    affine = np.diag([*zooms, 1.0])
    return np.clip(image, 0, None).astype(np.int16), labels, affine


def cohort_zip(path, subjects=("s01", "s02", "s03", "s04"), seed=0, folders=True, shape=(40, 44, 36),
               zooms=(1.0, 1.0, 1.0), extra=None):
    """A zip of labelled NIfTI volumes laid out as IBSR is published: <subject>/<subject>.nii.gz and
    <subject>/<subject>_seg.nii.gz (flat without folders); extra: {name: bytes} added as they are."""
    import zipfile

    import nibabel as nib

    rng = np.random.default_rng(seed)

    def gz(array, affine):
        return nifti_gz_bytes(nib.Nifti1Image(array, affine))

    with zipfile.ZipFile(path, "w") as zf:
        for s in subjects:
            image, labels, affine = synthetic_volume(rng, shape, zooms)
            folder = f"{s}/" if folders else ""
            zf.writestr(f"{folder}{s}.nii.gz", gz(image, affine))
            zf.writestr(f"{folder}{s}_seg.nii.gz", gz(labels, affine))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def nifti_gz_bytes(img):
    import gzip

    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


class OutlineExtractor:
    """An extractor whose outline lies `shift` voxels outside (> 0) or inside (< 0) the input's brain, its holes
    filled as deepbet's are (deepbet's is often tighter or looser than the tool that stripped a brain before)."""

    def __init__(self, shift):
        self.shift = shift

    def mask(self, img3, path):
        from scipy import ndimage

        brain = ndimage.binary_fill_holes(np.asanyarray(img3.dataobj) != 0)
        grow = ndimage.binary_dilation if self.shift > 0 else ndimage.binary_erosion
        return grow(brain, iterations=abs(self.shift))
