"""Segmenting a cohort: BIDS datasets, shares of the inputs for job arrays (--part, --merge), and
`mriseg predict` as 2 real torchrun processes (gloo on the CPU), one bad input among the good."""
import subprocess
import sys

import pandas as pd
import pytest

from conftest import mriseg
from test_predict import synthetic_volume


def bids_dataset(root):
    """Two subjects, two sessions each, as BIDS lays them out (plus files that are not T1w images)."""
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text('{"Name": "toy", "BIDSVersion": "1.8.0"}')
    for subject in ("01", "02"):
        for session in ("baseline", "followup"):
            anat = root / f"sub-{subject}" / f"ses-{session}" / "anat"
            anat.mkdir(parents=True)
            synthetic_volume(anat / f"sub-{subject}_ses-{session}_T1w.nii.gz")
            (anat / f"sub-{subject}_ses-{session}_T1w.json").write_text("{}")
    synthetic_volume(root / "sub-01" / "ses-baseline" / "anat" / "sub-01_ses-baseline_FLAIR.nii.gz")
    return root


def test_a_bids_dataset_gives_subject_and_session_columns(checkpoint, tmp_path):
    root = bids_dataset(tmp_path / "bids")
    r = mriseg("predict", "--skull-strip", "no", "--model", checkpoint, "--out", tmp_path / "out", root)
    assert r.returncode == 0, r.stderr
    table = pd.read_csv(tmp_path / "out" / "volumes.csv", dtype={"subject": str, "session": str})
    assert list(zip(table["subject"], table["session"])) == [("01", "baseline"), ("01", "followup"),
                                                             ("02", "baseline"), ("02", "followup")]
    assert not table["file"].str.contains("FLAIR").any()
    change = table.groupby("subject")["gray_matter_ml"].agg(lambda ml: ml.iloc[-1] - ml.iloc[0])
    assert list(change.index) == ["01", "02"]  # the change between visits: one groupby away
    assert (tmp_path / "out" / "sub-02_ses-followup_T1w_mask.nii.gz").exists()


def inputs_with_a_bad_one(folder):
    folder.mkdir()
    names = ["a.nii.gz", "b.nii.gz", "bad.nii.gz", "c.nii.gz", "d.nii.gz"]
    for name in names:
        if name == "bad.nii.gz":
            (folder / name).write_bytes(b"not a volume")
        else:
            synthetic_volume(folder / name)
    return [folder / name for name in names]


def good_rows_in_order(out, inputs):
    table = pd.read_csv(out / "volumes.csv")
    assert list(table["file"]) == [str(p) for p in inputs if p.name != "bad.nii.gz"]
    assert not list(out.glob("volumes.part-*")), "the parts are merged and gone"
    for p in inputs:
        assert (out / p.name.replace(".nii.gz", "_mask.nii.gz")).exists() == (p.name != "bad.nii.gz")
    return table


def test_parts_of_a_job_array_merge_in_input_order(checkpoint, tmp_path):
    inputs = inputs_with_a_bad_one(tmp_path / "in")
    out = tmp_path / "out"
    codes = [mriseg("predict", "--skull-strip", "no", "--model", checkpoint, "--out", out, "--part", f"{k}/2", *inputs).returncode
             for k in (1, 2)]
    assert codes == [1, 0]  # part 1 takes inputs 1, 3, 5 (bad.nii.gz is the third), part 2 inputs 2 and 4
    early = mriseg("predict", "--merge", "--out", tmp_path / "nothing-here")
    assert early.returncode == 2 and "volumes.part-K-of-N.csv" in early.stderr
    other = tmp_path / "other"
    codes = [mriseg("predict", "--skull-strip", "no", "--model", checkpoint, "--out", other, "--part", "1/2", *inputs).returncode,
             mriseg("predict", "--skull-strip", "no", "--model", checkpoint, "--out", other, "--part", "2/2", *inputs[:2]).returncode]
    mixed = mriseg("predict", "--merge", "--out", other)
    assert codes == [1, 0] and mixed.returncode == 2 and "different lists of inputs (of 2 and 5" in mixed.stderr
    assert (other / "volumes.part-2-of-2.csv").exists(), "a refused merge leaves the parts as they were"
    swapped = tmp_path / "swapped"  # as many inputs, in another order: the shares hold other inputs
    codes = [mriseg("predict", "--skull-strip", "no", "--model", checkpoint, "--out", swapped, "--part", "1/2", *inputs).returncode,
             mriseg("predict", "--skull-strip", "no", "--model", checkpoint, "--out", swapped, "--part", "2/2", *inputs[::-1]).returncode]
    mixed = mriseg("predict", "--merge", "--out", swapped)
    assert mixed.returncode == 2 and "different lists of inputs (of 5 each, other files or order" in mixed.stderr
    assert mriseg("predict", "--merge", "--out", out).returncode == 0
    good_rows_in_order(out, inputs)


@pytest.mark.slow
def test_two_torchrun_processes_segment_each_input_once(checkpoint, tmp_path):
    inputs = inputs_with_a_bad_one(tmp_path / "in")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "mriseg", "predict", "--skull-strip", "no", "--model", str(checkpoint), "--out", str(out),
                        *map(str, inputs)], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0, "a bad input makes its process exit 1"
    errors = [line for line in r.stderr.splitlines() if line.startswith("predict: error:")]
    assert len(errors) == 1 and "bad.nii.gz" in errors[0]
    assert "part 1/2" in r.stderr and "part 2/2" in r.stderr
    table = good_rows_in_order(out, inputs)
    alone = tmp_path / "alone"
    mriseg("predict", "--skull-strip", "no", "--model", checkpoint, "--out", alone, *inputs)
    assert table.equals(pd.read_csv(alone / "volumes.csv")), "the same volumes as one process"
