"""Apply a trained model: slices or a volume in, class probabilities and labels out (the inference that
`mriseg predict`, `mriseg evaluate` and the evaluate stage share)."""
import numpy as np
import torch

from .devices import autocast, inference_amp, pick_device
from .errors import ParamsError
from .labels import CSF, CSF_BORDERS, GRAY, gray_to_csf


def channels_last(x):
    # The layout the networks train in (train.channels_last), where oneDNN's bf16 CPU convolutions are fast.
    return x.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict_labels(model, x, device, amp="auto", batch_size=32):
    """images [N,C,H,W] float32 -> labels [N,H,W] uint8 (argmax over the classes)."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        with autocast(device, amp):
            logits = model(channels_last(x[i:i + batch_size].to(device)))
        out.append(logits.argmax(dim=1).to(torch.uint8).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0,) + tuple(x.shape[2:]), np.uint8)


@torch.no_grad()
def predict_probabilities(model, x, device, activation, amp="auto", batch_size=32):
    """images [N,C,H,W] float32 -> class probabilities [N,C,H,W] float32 (their argmax is predict_labels')."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        with autocast(device, amp):
            logits = model(channels_last(x[i:i + batch_size].to(device))).float()
        out.append((logits.sigmoid() if activation == "sigmoid" else logits.softmax(dim=1)).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model_classes(model)) + tuple(x.shape[2:]), np.float32)


def model_classes(model):
    """The number of classes a network predicts: its last layer's outputs."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1].out_channels


def working_grid_axis(ckpt):
    """The axis whose plane a checkpoint's grid resamples (resample_inplane): None for views trained on a
    cohort, which share one 3-D grid (isotropic, or each subject's voxels kept) cropped to the head; a slice
    archive's network, its own plane."""
    return ckpt["axis"] if ckpt.get("grid", "inplane") == "inplane" else None


class View:
    """One trained network and the rules it was trained with: its plane, neighbouring slices, tta."""

    def __init__(self, name, model, ckpt, weight):
        self.name, self.model, self.ckpt, self.weight = name, model, ckpt, weight
        self.axis = ckpt.get("axis", name)
        self.amp = inference_amp(ckpt.get("train", {}).get("amp", True))
        self.context = int(ckpt.get("context", 0))


class Predictor:
    """Trained views (one network per plane) and the rules they share (normalisation, grid, pixel size).

    A volume is resampled once onto the working grid; each view cuts it into slices in its plane and
    predicts class probabilities, put back into the volume; their weighted mean (FastSurfer's view
    aggregation) gives the labels, brought back to the input's own grid. Averaging on the working grid
    and then resampling linearly equals resampling each view and then averaging.
    """

    def __init__(self, checkpoint, device="auto", batch_size=32, csf_border="network"):
        from .models import load_views

        self.device, self.batch_size = pick_device(device, where="--device"), batch_size
        self.views = [View(*v) for v in load_views(checkpoint, self.device)]
        self.ckpt = self.views[0].ckpt  # rules every view shares (checked by the bundle stage)
        pixel = self.ckpt.get("pixel_size_mm")
        self.pixel_size = float(pixel[0]) if pixel else None
        self.grid_axis = working_grid_axis(self.ckpt)
        self.model, self.context = self.views[0].model, self.views[0].context
        self.classes = len(self.ckpt.get("classes", range(3)))  # 4 with CSF, 3 for models without it
        if csf_border not in CSF_BORDERS:
            raise ParamsError(f"csf border {csf_border!r}: use one of {', '.join(CSF_BORDERS)}")
        if csf_border == "intensity" and self.classes != 4:
            raise ParamsError(f"csf border intensity: {checkpoint} has no CSF class (use network)")
        self.csf_border = csf_border

    def labels(self, slices):
        """(n, H, W) slices, in order through one volume -> (n, H, W) labels (the first view's network)."""
        return self.probabilities(slices).argmax(axis=1).astype(np.uint8)

    def probabilities(self, slices, view=None):
        """(n, H, W) slices, in order through one volume -> (n, C, H, W) class probabilities of a view's
        network (default the first).

        A model trained with train.context > 0 gets each slice's neighbours as channels; a lone slice, or
        one at the end of the volume, stands in for its missing neighbours (as in training). Slices are
        centred in the next multiple of 16, as training pads them (volumes.pad_slices).
        """
        from .volumes import pad_margins, pad_slices, with_context

        view = view or self.views[0]
        slices = np.asarray(slices, dtype=np.float32)
        h, w = slices.shape[1:]
        if h < 16 or w < 16:  # padding would make up the whole image
            raise ValueError(f"slices of {h} x {w} pixels are too small to segment (at least 16 x 16)")
        top, left = pad_margins(h, w)[:2]
        padded = pad_slices(slices)
        x = with_context(padded, view.context) if view.context else padded[:, None]
        probs = predict_probabilities(view.model, torch.from_numpy(np.ascontiguousarray(x)), self.device,
                                      view.ckpt["activation"], view.amp, self.batch_size)
        return probs[:, :, top:top + h, left:left + w]

    def working_volume(self, img3):
        """A 3-D image as the views were trained on it: (the working grid's affine, normalised (X, Y, Z)
        volume), cropped to the head as cohorts are (an archive's slices: not cropped)."""
        from .volumes import crop_to_foreground, normalize_volume, resample_inplane

        work = resample_inplane(img3, self.grid_axis, self.pixel_size)
        volume = normalize_volume(np.asanyarray(work.dataobj), self.ckpt["normalization"])
        if self.grid_axis is not None:
            return work.affine, volume
        volume, affine, _ = crop_to_foreground(volume, work.affine)
        return affine, volume

    def view_probabilities(self, volume):
        """Yield (view, class probabilities (C, X, Y, Z)) of each view on a normalised working volume."""
        from .volumes import from_slices, to_slices

        for view in self.views:
            probs = self.probabilities(to_slices(volume, view.axis), view)
            yield view, np.stack([from_slices(probs[:, k], view.axis) for k in range(probs.shape[1])])

    def volume_probabilities(self, volume, each=None):
        """The views' class probabilities (C, X, Y, Z), averaged with their weights, the gray matter / CSF
        border then drawn as csf_border says; each(view, probs) sees every view's own first, as its network
        draws it (the evaluate stage scores each view alone). Lone .npy slices (labels) get no border."""
        total, weights = None, 0.0
        for view, probs in self.view_probabilities(volume):
            if each is not None:
                each(view, probs)
            total = probs * view.weight if total is None else total + probs * view.weight
            weights += view.weight
        total /= weights
        if self.csf_border == "intensity":
            # The views learnt IBSR's border, drawn on its 1.5 mm slices; the scan's own voxels show the sulci
            # finer: its gray matter darker than halfway to its pure CSF becomes CSF (GM and CSF swapped).
            darker = gray_to_csf(total.argmax(axis=0), volume)
            total[GRAY][darker], total[CSF][darker] = total[CSF][darker], total[GRAY][darker]
        return total

    def on_input_grid(self, probs, work_affine, reference_img3):
        """Class probabilities (C, X, Y, Z) on the working grid -> labels on the input's own voxel grid."""
        from .volumes import back_to_grid

        if probs.shape[1:] == reference_img3.shape and np.allclose(work_affine, reference_img3.affine):
            return probs.argmax(axis=0).astype(np.uint8)  # predicted on its own grid
        # probabilities, not labels, go back to the input's grid (see volumes.most_likely)
        return back_to_grid(list(probs), work_affine, reference_img3)

    def predict_volume(self, path):
        """The labels of a volume file on its own grid and shape (predict_image of volumes.load_volume's)."""
        from .volumes import load_volume

        img, img3 = load_volume(path)
        return self.predict_image(img3)[0].reshape(img.shape)

    def predict_image(self, img3):
        """(labels on a 3-D image's own grid, displayed slices, displayed labels: the first view's plane on
        the working grid)."""
        from .volumes import to_slices

        work_affine, volume = self.working_volume(img3)
        probs = self.volume_probabilities(volume)
        axis = self.views[0].axis
        return (self.on_input_grid(probs, work_affine, img3), to_slices(volume, axis),
                to_slices(probs.argmax(axis=0).astype(np.uint8), axis))
