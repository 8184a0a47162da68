"""What `mriseg predict` is given: files, folders, FreeSurfer subjects and BIDS datasets expanded into the
files to segment, and the names their outputs take."""
from pathlib import Path

from .errors import MrisegError


class InputError(MrisegError):
    """A bad input file; one line naming it."""


def bids_t1w(root):
    """A BIDS dataset's T1-weighted images, sub-*/[ses-*/]anat/*_T1w.nii[.gz], sorted; [] if it has none."""
    root = Path(root)
    found = [p for pattern in ("sub-*/anat/*_T1w.nii*", "sub-*/ses-*/anat/*_T1w.nii*") for p in root.glob(pattern)]
    return sorted(p for p in found if p.name.endswith(("_T1w.nii", "_T1w.nii.gz")))


def bids_entities(path):
    """(subject, session) from a BIDS file name (sub-<label>[_ses-<label>]_...); '' where absent."""
    name = Path(path).name.split(".")[0]  # BIDS labels are alphanumeric: the first dot starts the extension
    found = dict(part.split("-", 1) for part in name.split("_") if part.startswith(("sub-", "ses-")))
    return found.get("sub", ""), found.get("ses", "")


def expand_inputs(inputs, skip_labels=False):
    """Files as given; folders become their .npy/.nii/.nii.gz/.mgz files, sorted (without the label
    volumes of make-archive's pairing rules when skip_labels), the mri/norm.mgz of FreeSurfer subject
    folders (the folder itself, or its sub-folders) as make-archive finds them, and a BIDS dataset's
    sub-*/[ses-*/]anat/*_T1w.nii[.gz]."""
    from .labels import is_label_file
    from .scans import freesurfer_images
    from .volumes import is_volume

    files = []
    for item in map(Path, inputs):
        if item.is_dir() and (t1w := bids_t1w(item)):
            files += t1w
        elif item.is_dir() and item.name == "mri" and (item / "norm.mgz").is_file():
            files.append(item / "norm.mgz")  # a FreeSurfer subject's mri/: its image, not aseg, wm, ...
        elif item.is_dir():
            found = freesurfer_images(item) + sorted(
                p for p in item.iterdir() if p.is_file() and (p.suffix == ".npy" or is_volume(p))
                and not (skip_labels and is_label_file(p)))
            if not found:
                raise InputError(f"{item}: folder holds no .npy, .nii, .nii.gz or .mgz files "
                                 "nor FreeSurfer subjects (<subject>/mri/norm.mgz)")
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


def is_freesurfer(path):
    path = Path(path)
    return path.parent.name == "mri" and path.suffix == ".mgz"


def output_stem(path):
    """Outputs are named after the input; FreeSurfer's <subject>/mri/norm.mgz after its subject too."""
    from .volumes import volume_stem

    path = Path(path)
    stem = volume_stem(path)[0]
    return f"{path.parent.parent.name}_{stem}" if is_freesurfer(path) else stem


def display_name(path):
    path = Path(path)
    return f"{path.parent.parent.name}/mri/{path.name}" if is_freesurfer(path) else path.name
