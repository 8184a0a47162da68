"""The IBSR benchmark's fold manifests (the benchmark itself needs the shared subjects and hours)."""
import importlib.util

import numpy as np

from conftest import ROOT
from mriseg.data import load_split


def load_benchmark():
    spec = importlib.util.spec_from_file_location("ibsr_benchmark", ROOT / "benchmarks" / "ibsr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_thinned_training_slices_keep_their_real_neighbours(tmp_path):
    rows = []
    for s, subject in enumerate("ABC"):
        for z in range(8):
            image, mask = tmp_path / f"sub-{subject}_slice-{z}_{8 * s + z}.npy", tmp_path / f"m{8 * s + z}.npy"
            np.save(image, np.full((2, 3), 10 * s + z, np.float32))
            np.save(mask, np.zeros((2, 3), np.uint8))
            rows.append({"image": str(image), "mask": str(mask), "ix": str(8 * s + z), "subject": subject, "slice": z})
    df = load_benchmark().fold_manifest(rows, ["C"], n_val=1, train_stride=2)
    assert df.groupby("split")["subject"].agg(lambda s: "".join(sorted(set(s)))).to_dict() == {
        "test": "C", "val": "A", "train": "B", "unused": "B"}
    x, _, kept = load_split(df, "train", context=1)
    assert list(kept["slice"]) == [0, 2, 4, 6]
    # Odd slices are not trained on, but still lend their pixels as neighbours (as at test time).
    assert x[:, :, 0, 0].tolist() == [[10, 10, 11], [11, 12, 13], [13, 14, 15], [15, 16, 17]]
    assert len(load_split(df, "test", context=1)[0]) == 8
