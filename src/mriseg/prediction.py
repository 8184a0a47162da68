"""Apply a trained model: slices in, label maps out."""
import os
from pathlib import Path

import numpy as np
import torch

from . import first_line

from .training import autocast


@torch.no_grad()
def predict_labels(model, x, device, amp=True, batch_size=32):
    """images [N,C,H,W] float32 -> labels [N,H,W] uint8 (argmax over the three classes)."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        with autocast(device, amp):
            logits = model(x[i:i + batch_size].to(device))
        out.append(logits.argmax(dim=1).to(torch.uint8).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0,) + tuple(x.shape[2:]), np.uint8)


class InputError(ValueError):
    """A bad input file; one line naming it."""


VOLUME_COLUMNS = ["file", "white_matter_voxels", "gray_matter_voxels", "white_matter_ml", "gray_matter_ml",
                  "gray_white_ratio", "white_matter_mm2", "gray_matter_mm2"]


def expand_inputs(inputs):
    """Files as given; folders become their .npy/.nii/.nii.gz/.mgz files, sorted."""
    from .volumes import is_volume

    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and (p.suffix == ".npy" or is_volume(p)))
            if not found:
                raise InputError(f"{item}: folder holds no .npy, .nii, .nii.gz or .mgz files")
            files += found
        else:
            files.append(item)
    return files


def load_slice(path):
    from .archive import ArchiveError, check_image, load_npy

    try:
        data = Path(path).read_bytes()
        return check_image(load_npy(data, str(path)), str(path))
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    except ArchiveError as e:
        raise InputError(str(e)) from None


def tissue_counts(labels):
    return int((labels == 0).sum()), int((labels == 1).sum())


def brain_slices(labels, n=5):
    """Up to n evenly spaced slice indices among those with at least a quarter of the most tissue."""
    tissue = (labels < 2).reshape(len(labels), -1).sum(axis=1)
    has = np.nonzero(tissue >= 0.25 * tissue.max())[0] if tissue.max() else np.arange(0)
    has = has if len(has) else np.arange(len(labels))
    return has[np.linspace(0, len(has) - 1, min(n, len(has))).round().astype(int)]


class Predictor:
    """A trained model and the rules it was trained with (normalisation, axis, pixel size)."""

    def __init__(self, checkpoint, device="auto", batch_size=32):
        from .models import load_checkpoint
        from .training import pick_device

        self.device = pick_device(device)
        self.model, self.ckpt = load_checkpoint(checkpoint, self.device)
        self.amp = self.ckpt.get("train", {}).get("amp", True)
        self.batch_size = batch_size
        pixel = self.ckpt.get("pixel_size_mm")
        self.pixel_size = float(pixel[0]) if pixel else None
        self.context = int(self.ckpt.get("context", 0))

    def labels(self, slices):
        """(n, H, W) slices, in order through one volume -> (n, H, W) labels.

        A model trained with train.context > 0 gets each slice's neighbours as channels; a lone slice, or
        one at the end of the volume, stands in for its missing neighbours (as in training).
        """
        from .volumes import with_context

        slices = np.asarray(slices, dtype=np.float32)
        x = with_context(slices, self.context) if self.context else slices[:, None]
        return predict_labels(self.model, torch.from_numpy(np.ascontiguousarray(x)), self.device, self.amp,
                              self.batch_size)

    def predict_volume(self, path):
        """(labels on the input's own grid and shape, input image, displayed slices, displayed labels)."""
        import nibabel as nib

        from .volumes import back_to_grid, from_slices, load_volume, normalize_volume, resample_inplane, to_slices

        img, img3 = load_volume(path)
        axis = self.ckpt["axis"]
        work = resample_inplane(img3, axis, self.pixel_size)
        slices = to_slices(normalize_volume(np.asanyarray(work.dataobj), self.ckpt["normalization"]), axis)
        labels = self.labels(slices)
        on_grid = back_to_grid(nib.Nifti1Image(from_slices(labels, axis), work.affine), img3, background=2)
        return on_grid.reshape(img.shape), img, slices, labels


def save_volume(img, path, ext):
    """nibabel picks the format from the suffix, so the temporary file keeps it; renamed when complete."""
    import nibabel as nib

    tmp = path.with_name(f".{path.name}.tmp{ext}")
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def predict_files(checkpoint, out_dir, inputs, device="auto", batch_size=32, pixel_size=None, slice_thickness=1.0,
                  log=print):
    """Segment every input; returns the number that failed. Raises InputError/CheckpointError up front."""
    import nibabel as nib
    import pandas as pd
    from tqdm import tqdm

    from .io import atomic_path
    from .reporting import plot_overlay
    from .volumes import VolumeError, is_volume, volume_stem

    predictor = Predictor(checkpoint, device, batch_size)
    files = expand_inputs(inputs)
    if not files:
        raise InputError("no inputs given (slices .npy, folders of them, or .nii/.nii.gz/.mgz volumes)")
    stems = {}
    for path in files:  # outputs are named after the input's stem: two inputs must not share one
        other = stems.setdefault(volume_stem(path)[0], path)
        if other != path:
            raise InputError(f"{path} and {other} would write the same {volume_stem(path)[0]}_mask file; "
                             "rename one or run them separately")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if predictor.context and any(p.suffix == ".npy" for p in files):
        log(f"predict: note: {checkpoint} was trained with {predictor.context} neighbouring slice(s) each side; "
            "a lone .npy slice stands in for its own neighbours (segment whole volumes for the full benefit)")
    rows, failed = [], 0
    for path in tqdm(files, desc="predict", unit="file"):
        stem, ext = volume_stem(path)
        try:
            if is_volume(path):
                labels, img, shown, shown_labels = predictor.predict_volume(path)
                mask = img.__class__(labels, img.affine, header=img.header)
                mask.set_data_dtype(np.uint8)
                save_volume(mask, out_dir / f"{stem}_mask{ext}", ext)
                voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
                wm, gm = tissue_counts(labels)
                row = {"white_matter_ml": wm * voxel_ml, "gray_matter_ml": gm * voxel_ml}
                pick = brain_slices(shown_labels)
                plot_overlay(shown[pick], shown_labels[pick], out_dir / f"{stem}_overlay.png", title=path.name)
            elif path.suffix == ".npy":
                image = load_slice(path)
                labels = predictor.labels(image[None])[0]
                with atomic_path(out_dir / f"{stem}_mask.npy") as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, labels, allow_pickle=False)
                wm, gm = tissue_counts(labels)
                row = {}
                if pixel_size:
                    area = pixel_size[0] * pixel_size[-1]
                    row = {"white_matter_mm2": wm * area, "gray_matter_mm2": gm * area,
                           "white_matter_ml": wm * area * slice_thickness / 1000,
                           "gray_matter_ml": gm * area * slice_thickness / 1000}
                plot_overlay(image, labels, out_dir / f"{stem}_overlay.png", title=path.name)
            else:
                raise InputError(f"{path}: unsupported input (use .npy slices or .nii/.nii.gz/.mgz volumes)")
        except (InputError, VolumeError) as e:
            failed += 1
            log(f"predict: error: {e}")
            continue
        except (RuntimeError, ValueError, OSError) as e:  # e.g. a slice too small for the network
            failed += 1
            log(f"predict: error: {path}: {first_line(e)}")
            continue
        rows.append({"file": str(path), "white_matter_voxels": wm, "gray_matter_voxels": gm,
                     "gray_white_ratio": gm / wm if wm else float("nan"), **row})
    with atomic_path(out_dir / "volumes.csv") as tmp:
        pd.DataFrame(rows, columns=VOLUME_COLUMNS).to_csv(tmp, index=False)
    log(f"segmented {len(rows)} of {len(files)} inputs -> {out_dir} (volumes.csv)")
    return failed
