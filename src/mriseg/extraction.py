"""Brain extraction in front of segmentation, for whole-head T1 scans (skull, scalp, face, neck).

The extractor is deepbet (Fisch et al., 2024; MIT licence), whose two TorchScript networks ship inside its
PyPI wheel, so it runs offline: a coarse network finds the brain's box at 128^3, a fine one masks it at
256^3, then the largest connected piece is kept and its holes filled. Its mask is the brain: cerebrum,
cerebellum and brainstem with the CSF between them, without the skull, the dura outside the brain, the
eyes and the neck. Everything about the extractor is in this module: a better one is a change of this
file (benchmarks/results/brain-extraction/ records how each candidate was measured).
"""
import warnings

import numpy as np

from .errors import MrisegError

EXTRACTOR = "deepbet 1.0.2"
# auto: an input whose bright voxels lie within this many voxels of the extracted brain (all but
# ALREADY_OUTSIDE of them) was extracted before. Measured: FreeSurfer's norm.mgz 0.009, IBSR 0.000, a
# head 0.360 (benchmarks/results/brain-extraction/cpu.md).
ALREADY_MARGIN, ALREADY_OUTSIDE = 5, 0.05
SKULL_STRIP = ("auto", "yes", "no")
# A plausible adult brain mask (brain and the CSF between its parts, as the extractor draws it), ml; half
# the lower bound is no brain at all (strip_skull refuses it).
BRAIN_ML = (800.0, 2000.0)
ICV_CLOSING_MM = 3  # intracranial: sulci up to about twice this wide are closed


class ExtractorError(MrisegError):
    """The extractor cannot run: its package or weights missing or unreadable."""


class NoBrainError(MrisegError):
    """The extractor found no brain in this image."""


class BrainExtractor:
    """deepbet's networks on `device` (a torch.device), loaded once for every volume of a run."""

    def __init__(self, device):
        try:
            from deepbet import BrainExtraction
        except ImportError as e:
            raise ExtractorError(f"brain extraction needs {EXTRACTOR} (pip install deepbet==1.0.2): {e}") from None
        try:
            with warnings.catch_warnings():  # torch.jit.load's deprecation notice, once per run: not the user's
                warnings.simplefilter("ignore", FutureWarning)
                self.bet = BrainExtraction(no_gpu=device.type != "cuda")
        except (OSError, RuntimeError, ValueError) as e:
            raise ExtractorError(f"cannot load {EXTRACTOR}'s weights: {str(e).splitlines()[0] if str(e) else e}") \
                from None

    def mask(self, img3, where):
        """The brain mask (bool) of a 3-D image on its own voxel grid. NoBrainError naming `where` when
        the extractor finds none."""
        import nibabel as nib

        canon = nib.as_closest_canonical(img3)
        x = np.nan_to_num(canon.get_fdata(dtype=np.float32))
        if not np.isfinite(x).all() or x.max() <= x.min():
            raise NoBrainError(f"{where}: constant image: no brain to extract")
        try:
            found = self.bet.postprocess(self.bet.run_model(x.copy()) > 0.5)
        except (AssertionError, ValueError, RuntimeError) as e:  # deepbet asserts a box; argmax of nothing
            raise NoBrainError(f"{where}: the brain extractor found no brain ({str(e).splitlines()[0]})") from None
        to_input = nib.orientations.ornt_transform(nib.io_orientation(canon.affine), nib.io_orientation(img3.affine))
        return nib.orientations.apply_orientation(found.astype(bool), to_input).astype(bool)


def already_extracted(image, brain):
    """Whether a 3-D image was skull-stripped before: all but ALREADY_OUTSIDE of its bright voxels lie
    within ALREADY_MARGIN voxels of the extracted brain."""
    return share_outside(image, brain) <= ALREADY_OUTSIDE


def share_outside(image, brain):
    """The share of an image's bright voxels (above the 2nd percentile of the non-zero ones) farther than
    ALREADY_MARGIN voxels from the brain mask: a head's scalp, skull and neck; 1 for an image of zeros."""
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float32)
    nonzero = image[image > 0]
    if not nonzero.size:
        return 1.0
    bright = image > np.percentile(nonzero, 2)
    near = ndimage.binary_dilation(brain, iterations=ALREADY_MARGIN)
    return float((bright & ~near).sum()) / max(int(bright.sum()), 1)


def find_brain(extractor, img3, path, skull_strip):
    """(the brain mask on the input's grid or None, the skull_strip column): "no" without an extractor,
    "already extracted" where auto finds the input stripped before, else "extracted". NoBrainError where
    the extracted brain is smaller than half an adult's. An input extracted before is segmented as it is, and
    measured in its non-zero voxels (holes filled) that lie in the extracted brain: a loose earlier mask (as
    FreeSurfer's brainmask, with dura and the CSF outside the brain) would otherwise count what it kept as gray
    matter, CSF and intracranial volume (niivue-01: ICV +25.5 % -> +11.6 %,
    benchmarks/results/brain-extraction/cpu.md), while a tight one (IBSR's) is left as it was."""
    if extractor is None:
        return None, "no"
    image = np.asanyarray(img3.dataobj)
    brain = extractor.mask(img3, path)
    if skull_strip == "auto" and already_extracted(image, brain):
        from scipy import ndimage

        return ndimage.binary_fill_holes(image != 0) & brain, "already extracted"
    brain_ml = brain.sum() * voxel_ml_of(img3)
    if brain_ml < BRAIN_ML[0] / 2:
        raise NoBrainError(f"{path}: the extracted brain is {brain_ml:.0f} ml, smaller than any adult brain "
                           "(is it a head T1 scan?)")
    return brain, "extracted"


def strip_skull(extractor, img3, path, skull_strip):
    """(the image the views see, its brain mask or None, the skull_strip column): find_brain, and where it
    extracted, the image with everything outside the brain set to 0 (as the training brains are)."""
    import nibabel as nib

    brain, decided = find_brain(extractor, img3, path, skull_strip)
    if decided != "extracted":
        return img3, brain, decided
    return nib.Nifti1Image(np.where(brain, np.asanyarray(img3.dataobj), 0).astype(np.float32), img3.affine), \
        brain, decided


def voxel_ml_of(img):
    """The volume of one voxel of a nibabel image, in ml."""
    return float(np.prod(img.header.get_zooms()[:3])) / 1000.0


def intracranial(labels, brain, zooms):
    """The intracranial space of a segmented scan: its white matter, gray matter and CSF (labels 0, 1, 3) and
    the brain mask where there is one, closed by a ball of ICV_CLOSING_MM and filled (volumes.filled_closing),
    so that the CSF of the sulci and ventricles is inside. icv_ml is its volume. Known bias: it ends where the
    brain mask and the segmented CSF end; the extractor draws its mask at the brain's outer CSF, so the CSF
    between that and the inner table of the skull is missing where the mask is tighter (docs/heads.md)."""
    from .volumes import filled_closing

    inside = (labels != 2) if brain is None else (labels != 2) | brain
    return filled_closing(inside, ICV_CLOSING_MM, zooms)
