"""The embedded default data: a zip of two labelled T1 volumes (a small cohort) built offline from MNI152 2009.

nilearn ships the MNI152 2009 T1 template, its gray- and white-matter probability maps and its brain mask
inside its wheel (1 mm). Labels give every voxel the most probable class, the third's probability being
1 - p(white matter) - p(gray matter): CSF inside the brain mask, background outside it; written with IBSR's
codes (3 white matter, 2 gray matter, 1 CSF, 0 background: `data.labels: ibsr`). Both subjects are the same central BLOCK of
the template, so that a 2-core CPU trains three views on it in minutes: `mni152` as it is, and
`mni152-warped` placed in the world rotated and scaled (its working grid cuts it anew, as another head
would be) with a gamma change of contrast. One template brain: it shows the pipeline working end to end;
it is no clinical benchmark (the test subject is the training subject, warped).
"""
import zipfile

import numpy as np

# (X, Y, Z) voxels of the 197 x 233 x 189 template: 80 x 96 x 80 mm around the basal ganglia.
BLOCK = (slice(58, 138), slice(68, 164), slice(42, 122))
WARP = {"rotation_deg": (5.0, 0.0, 8.0), "scale": (1.04, 0.94, 0.98), "gamma": 0.8}
IBSR_CODES = np.array([3, 2, 0, 1], np.uint8)  # our classes 0 WM, 1 GM, 2 background, 3 CSF -> IBSR's labels


def mni152_volumes():
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata()
    brain = datasets.load_mni152_brain_mask(resolution=1).get_fdata() > 0
    return t1.get_fdata(), gm, wm, brain, t1.affine


def mni152_brain():
    """The skull-stripped template and its tissue labels: (T1 float32 zero outside nilearn's brain mask, labels
    uint8, each voxel's most probable class, background outside the mask, affine)."""
    t1, gm, wm, brain, affine = mni152_volumes()
    return (t1 * brain).astype(np.float32), labels_from_probabilities(wm, gm, brain), affine


def labels_from_probabilities(wm, gm, brain):
    """0 white matter, 1 gray matter, 3 CSF (neither, inside the brain mask), 2 background (outside it)."""
    rest = np.argmax(np.stack([wm, gm, 1.0 - wm - gm]), axis=0).astype(np.uint8)
    return np.where(brain, np.where(rest == 2, 3, rest), 2).astype(np.uint8)


def warp_affine(affine, rotation_deg, scale):
    """The affine of the same voxels rotated (degrees about R, A, S) and scaled about the block's centre."""
    rx, ry, rz = np.radians(rotation_deg)
    rot = (np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
           @ np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
           @ np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]]))
    out = np.eye(4)
    out[:3, :3] = rot @ np.diag(scale) @ affine[:3, :3]
    out[:3, 3] = affine[:3, 3]
    return out


def nifti_bytes(data, affine):
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    return img.to_bytes()


def build_sample_archive(path):
    """Write the sample zip (deterministic bytes); returns the number of subjects."""
    t1, gm, wm, brain, affine = mni152_volumes()
    image = (np.clip(t1[BLOCK], 0, None)).astype(np.float32)
    labels = IBSR_CODES[labels_from_probabilities(wm, gm, brain)[BLOCK]]
    block_affine = affine.copy()
    block_affine[:3, 3] = affine[:3, :3] @ [s.start for s in BLOCK] + affine[:3, 3]
    warped = warp_affine(block_affine, WARP["rotation_deg"], WARP["scale"])
    contrast = (image / image.max()) ** WARP["gamma"] * image.max()
    subjects = {"mni152": (image, block_affine), "mni152-warped": (contrast.astype(np.float32), warped)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, (data, aff) in subjects.items():
            for entry, array in ((f"{name}/{name}.nii", data), (f"{name}/{name}_seg.nii", labels)):
                info = zipfile.ZipInfo(entry, date_time=(2026, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, nifti_bytes(array, aff))
    return len(subjects)
