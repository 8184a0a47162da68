"""The tutorial's archive layout: writing it, and extracting it without trusting it.

Layout: MRIs/MRIs/<name>_<ix>.npy (float images) and MRIs/Segmentations/segm_<ix>.npy (uint8 masks,
0 = white matter, 1 = gray matter, 2 = background); an image's mask is named after the part of its
file name after the last `_`. Optional MRIs/mriseg.json describes how the slices were made.

Extraction rejects, with one line naming the file: anything that is not a readable zip, an empty
zip, entries with absolute paths or `..` (zip-slip), symlink entries, archives whose declared
uncompressed size passes the cap (zip bombs), a missing image or mask folder, an image without a
mask or a mask without an image, and arrays that are not plain 2-D `.npy` of the right kind.
Ignored (never extracted): macOS metadata (`__MACOSX/`, `._*`, `.DS_Store`), directories, and any
file outside MRIs/MRIs and MRIs/Segmentations or not ending in `.npy`.
"""
import hashlib
import io
import json
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from .errors import MrisegError
from .io import replace_dir

IMAGE_DIR = "MRIs/MRIs"
MASK_DIR = "MRIs/Segmentations"
METADATA = "MRIs/mriseg.json"
MAX_EXTRACTED_MB = 4096  # zip-bomb cap on the declared uncompressed size (the tutorial's archive: ~330 MB)
LABELS = (0, 1, 2)


class ArchiveError(MrisegError):
    """A bad archive or array; the message is one line that names the file."""


def mask_name(image_name):
    """The tutorial's pairing rule: image `<name>_<ix>.npy` -> mask `segm_<ix>.npy`."""
    stem = PurePosixPath(image_name).stem
    return f"segm_{stem.rsplit('_', 1)[-1]}.npy"


def slice_index(image_name):
    return PurePosixPath(image_name).stem.rsplit("_", 1)[-1]


def npy_bytes(array):
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def save_hashed(root, relpath, array, hashes):
    """Save an array as root/relpath (.npy) and record its sha256 in hashes under relpath."""
    data = npy_bytes(array)
    (Path(root) / relpath).write_bytes(data)
    hashes[relpath] = hashlib.sha256(data).hexdigest()


def write_hashes(root, hashes):
    """root/files.json: the sha256 of every file written there (the training resume fingerprint reads it)."""
    (Path(root) / "files.json").write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")


def write_archive(path, pairs, metadata=None):
    """Write (image_name, image, mask) pairs as a deterministic zip (fixed order and timestamps)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        def add(name, data):
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)

        if metadata is not None:
            add(METADATA, json.dumps(metadata, indent=2, sort_keys=True))
        for image_name, image, mask in pairs:
            add(f"{IMAGE_DIR}/{image_name}", npy_bytes(np.asarray(image, dtype=np.float32)))
            add(f"{MASK_DIR}/{mask_name(image_name)}", npy_bytes(np.asarray(mask, dtype=np.uint8)))


def _ignored(name):
    parts = PurePosixPath(name).parts
    return name.endswith("/") or parts[0] == "__MACOSX" or parts[-1].startswith(".")


def _check_entry(info, archive):
    name = info.filename
    p = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or p.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"{archive}: entry {name!r} has an absolute path (refusing zip-slip)")
    if ".." in p.parts:
        raise ArchiveError(f"{archive}: entry {name!r} climbs out with '..' (refusing zip-slip)")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ArchiveError(f"{archive}: entry {name!r} is a symbolic link (refused)")
    if info.flag_bits & 0x1:
        raise ArchiveError(f"{archive}: entry {name!r} is encrypted")


def load_npy(data, where):
    """Parse .npy bytes without ever unpickling."""
    if not data.startswith(b"\x93NUMPY"):
        raise ArchiveError(f"{where}: not a valid .npy file (no NumPy header)")
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise ArchiveError(f"{where}: holds an object array that needs pickle (refused)") from None
        raise ArchiveError(f"{where}: not a valid .npy file ({e})") from None
    except (OSError, EOFError) as e:
        raise ArchiveError(f"{where}: not a valid .npy file ({e})") from None


def check_image(image, where):
    if image.ndim != 2:
        raise ArchiveError(f"{where}: image must be 2-D, got shape {image.shape}")
    if image.dtype.kind not in "fiu":
        raise ArchiveError(f"{where}: image must hold numbers, got dtype {image.dtype}")
    if not np.isfinite(image).all():
        raise ArchiveError(f"{where}: image has NaN or infinite values")
    return image.astype(np.float32)


def check_mask(mask, where):
    if mask.ndim != 2:
        raise ArchiveError(f"{where}: mask must be 2-D, got shape {mask.shape}")
    if mask.dtype.kind not in "iu":
        raise ArchiveError(f"{where}: mask must have an integer dtype, got {mask.dtype}")
    bad = np.setdiff1d(np.unique(mask), LABELS)
    if bad.size:
        raise ArchiveError(f"{where}: mask has labels {bad.tolist()[:5]} outside {{0, 1, 2}}")
    return mask.astype(np.uint8)


def extract_archive(archive, dest, max_extracted_mb=MAX_EXTRACTED_MB):
    """Validate `archive` and extract its pairs into `dest` (dest/MRIs, dest/Segmentations).

    Everything is written into a temporary folder beside `dest` and swapped in only once the whole
    archive has passed; on any error `dest` is left exactly as it was. Returns the number of pairs.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except FileNotFoundError:
        raise ArchiveError(f"{archive}: no such file") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise ArchiveError(f"{archive}: not a readable zip archive ({e})") from None
    with zf:
        infos = zf.infolist()
        if not infos:
            raise ArchiveError(f"{archive}: the zip archive is empty")
        for info in infos:
            _check_entry(info, archive)
        total = sum(i.file_size for i in infos)
        if total > max_extracted_mb * 2**20:
            raise ArchiveError(
                f"{archive}: declares {total / 2**20:.0f} MB uncompressed, over the {max_extracted_mb} MB cap "
                "(data.max_extracted_mb)"
            )
        files = [i for i in infos if not _ignored(i.filename)]
        images = {PurePosixPath(i.filename).name: i for i in files
                  if str(PurePosixPath(i.filename).parent) == IMAGE_DIR and i.filename.endswith(".npy")}
        masks = {PurePosixPath(i.filename).name: i for i in files
                 if str(PurePosixPath(i.filename).parent) == MASK_DIR and i.filename.endswith(".npy")}
        names = {i.filename for i in files}
        if len(names) < len(files):
            dup = next(n for n in names if sum(i.filename == n for i in files) > 1)
            raise ArchiveError(f"{archive}: entry {dup!r} appears more than once (ambiguous archive)")
        for folder, found in ((IMAGE_DIR, images), (MASK_DIR, masks)):
            if not found:
                raise ArchiveError(f"{archive}: no {folder}/ folder with .npy files (not the tutorial's layout)")
        for name in masks:
            if not name.startswith("segm_"):
                raise ArchiveError(f"{archive}: {MASK_DIR}/{name}: mask files must be named segm_<ix>.npy")
        by_mask = {}
        for name in sorted(images):
            m = mask_name(name)
            if m not in masks:
                raise ArchiveError(f"{archive}: {IMAGE_DIR}/{name} has no mask {MASK_DIR}/{m}")
            if m in by_mask:
                raise ArchiveError(f"{archive}: {IMAGE_DIR}/{name} and {IMAGE_DIR}/{by_mask[m]} share the mask {m}")
            by_mask[m] = name
        for m in sorted(masks):
            if m not in by_mask:
                raise ArchiveError(f"{archive}: {MASK_DIR}/{m} has no image (expected {IMAGE_DIR}/<name>_{slice_index(m)}.npy)")
        metadata = None
        if METADATA in names:
            try:
                metadata = json.loads(zf.read(METADATA))
                assert isinstance(metadata, dict)
            except Exception:
                raise ArchiveError(f"{archive}: {METADATA} is not a JSON object") from None

        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        try:
            (tmp / "MRIs").mkdir()
            (tmp / "Segmentations").mkdir()
            hashes = {}
            for name in sorted(images):
                m = mask_name(name)
                image = check_image(load_npy(_read(zf, images[name], archive), f"{archive}: {IMAGE_DIR}/{name}"),
                                    f"{archive}: {IMAGE_DIR}/{name}")
                mask = check_mask(load_npy(_read(zf, masks[m], archive), f"{archive}: {MASK_DIR}/{m}"),
                                  f"{archive}: {MASK_DIR}/{m}")
                if image.shape != mask.shape:
                    raise ArchiveError(f"{archive}: {IMAGE_DIR}/{name} has shape {image.shape} "
                                       f"but its mask {m} has {mask.shape}")
                save_hashed(tmp, f"MRIs/{name}", image, hashes)
                save_hashed(tmp, f"Segmentations/{m}", mask, hashes)
            if metadata is not None:
                (tmp / "mriseg.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
            write_hashes(tmp, hashes)
            replace_dir(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return len(images)


def _read(zf, info, archive):
    try:
        return zf.read(info)
    except Exception as e:  # BadZipFile (CRC), EOFError (truncated), zlib.error: a damaged stream
        raise ArchiveError(f"{archive}: {info.filename}: cannot be read, the archive is damaged ({e})") from None
