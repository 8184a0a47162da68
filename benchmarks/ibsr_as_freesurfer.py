"""IBSR subjects in FreeSurfer's form, to check the FreeSurfer path (make-archive, predict, evaluate) on
real anatomy: each volume conformed as FreeSurfer conforms it (256^3, 1 mm, LIA, uint8 with white matter
near 110) into <out>/<subject>/mri/norm.mgz, its labels (nearest neighbour) into mri/aseg.mgz with aseg's
codes (2/41 cerebral white matter, 3/42 cortex, 4/43 lateral ventricles, left/right by the midline).

    python benchmarks/ibsr_as_freesurfer.py --out fs IBSR_07 IBSR_08
    mriseg predict --model models/model.pt --out results --labels freesurfer-aseg fs
    mriseg make-archive fs --out fs.zip --labels freesurfer-aseg --like models/model.pt
    mriseg evaluate fs.zip --model models/model.pt
"""
import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import conform

ROOT = Path(__file__).resolve().parents[1]
ASEG = {3: (2, 41), 2: (3, 42), 1: (4, 43)}  # IBSR label -> aseg (left, right)


def as_freesurfer(image_path, seg_path, out_dir):
    squeeze = lambda img, dtype: nib.Nifti1Image(np.asanyarray(img.dataobj)[..., 0].astype(dtype), img.affine)
    shape = dict(out_shape=(256, 256, 256), voxel_size=(1.0, 1.0, 1.0), orientation="LIA")
    norm = conform(squeeze(nib.load(image_path), np.float32), order=1, **shape)
    labels = np.rint(np.asanyarray(conform(squeeze(nib.load(seg_path), np.int16), order=0, **shape).dataobj))
    data = np.asanyarray(norm.dataobj)
    data = np.clip(data / np.percentile(data[data > 0], 99.5) * 110, 0, 255).astype(np.uint8)
    x = nib.affines.apply_affine(norm.affine, np.indices(labels.shape).reshape(3, -1).T)[:, 0].reshape(labels.shape)
    left = x < np.median(x[labels > 0])  # RAS: left of the brain's midline
    aseg = np.zeros(labels.shape, np.int32)
    for ibsr, (l_code, r_code) in ASEG.items():
        aseg[(labels == ibsr) & left] = l_code
        aseg[(labels == ibsr) & ~left] = r_code
    out_dir.mkdir(parents=True, exist_ok=True)
    nib.save(nib.MGHImage(data, norm.affine), out_dir / "norm.mgz")
    nib.save(nib.MGHImage(aseg, norm.affine), out_dir / "aseg.mgz")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("subjects", nargs="+", help="IBSR subject names, e.g. IBSR_07")
    p.add_argument("--src", default=ROOT.parent / "shared" / "data" / "ibsr18-dev", type=Path)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args()
    for s in args.subjects:
        as_freesurfer(args.src / f"{s}.nii.gz", args.src / f"{s}_seg.nii.gz", args.out / s / "mri")
        print(f"{args.out / s / 'mri'}: norm.mgz, aseg.mgz")


if __name__ == "__main__":
    main()
