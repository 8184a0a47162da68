"""The slices of a split streamed from disk as a torch Dataset, and fed to the device in batches."""
import math
from collections import OrderedDict

import numpy as np
import torch

from .volumes import FAR, brain_distance, pad_margins, pad_slices, view_shape, view_slice


class SliceDataset(torch.utils.data.Dataset):
    """The slices of one split (in one view, when given), read from disk when asked for: (image [C,H,W]
    float32, mask [H,W] uint8).

    C = 2 * context + 1: each slice with its neighbours as channels (2.5D). A cohort's slice is cut from its
    memory-mapped (X, Y, Z) volume in its view's plane, with the real neighbouring slices of that plane; a
    slice archive's slice the files of the same subject at slice +- d (from the whole manifest: in a slice
    split an image may borrow its neighbour's pixels, never its labels). A missing neighbour (past the volume, or unknown) repeats the slice itself,
    as in prediction. Each slice is centred in the next multiple of 16 (volumes.pad_slices, the rule
    prediction uses) and placed at the top left of the split's frame (the largest such size), masks
    padded with background, so every item of a split has one shape. Nothing is held but the file names
    and at most MAX_OPEN memory-mapped volumes.
    """

    MAX_OPEN = 256  # memory maps kept open per process (a process may hold ~65,000)
    MAX_DISTANCES = 4  # label_context: brain distance volumes held (one label volume each, computed on demand)

    def __init__(self, manifest, split, context=0, view=None, label_context=False, label_distances=True):
        keep = manifest["split"] == split
        if view is not None:
            keep &= manifest["view"] == view
        self.rows = manifest[keep].reset_index(drop=True)
        self.context = context
        # masks [2C,H,W]: every input channel's own labels, then their distances outside the brain (synthesis.py);
        # [C,H,W] without the distances, which only synthesis needs (a 3-D distance per volume is costly)
        self.label_context, self.label_distances = label_context, label_distances
        self._distances = OrderedDict()
        self.views = list(self.rows["view"])
        self.images, self.masks = list(self.rows["image"]), list(self.rows["mask"])
        self.z = [int(z) for z in self.rows["z"]]
        self.neighbours = None
        if context and (self.rows["z"] < 0).any():
            files = manifest[(manifest["z"] < 0) & (manifest["slice"] >= 0)]
            index = {(r.subject, r.slice): r for r in files.itertuples()}
            self.neighbours = [[neighbour(index.get((r.subject, r.slice + d)), r, split) for d in self.offsets()]
                               if r.z < 0 else None for r in self.rows.itertuples()]
        self._open = OrderedDict()
        self.frame = self._frame()

    def offsets(self):
        return range(-self.context, self.context + 1)

    def _array(self, path):
        """A cohort volume stays mapped (least recently used closed first); a one-slice file is read."""
        return recently_used(self._open, path, self.MAX_OPEN, lambda: np.load(path, mmap_mode="r", allow_pickle=False),
                             keep=lambda array: array.ndim == 3)

    def _frame(self):
        shapes = {}
        for path, view in zip(self.images, self.views):
            if (path, view) not in shapes:
                shape = self._array(path).shape
                shapes[path, view] = pad_margins(*(view_shape(shape, view)[1:] if len(shape) == 3 else shape))[2:]
        return (max(s[0] for s in shapes.values()), max(s[1] for s in shapes.values())) if shapes else (16, 16)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        z = self.z[i]
        with_distances = self.label_context and self.label_distances
        if z >= 0:
            volume, masks, view = self._array(self.images[i]), self._array(self.masks[i]), self.views[i]
            n = view_shape(volume.shape, view)[0]
            planes = [z + d if 0 <= z + d < n else z for d in self.offsets()]
            x = np.stack([view_slice(volume, view, p) for p in planes])
            if self.label_context:
                y = np.stack([view_slice(masks, view, p) for p in planes])
                if with_distances:
                    distance = self._distance(self.masks[i], masks)
                    distance = np.stack([view_slice(distance, view, p) for p in planes])
            else:
                y = view_slice(masks, view, z)
        else:
            paths = self.neighbours[i] if self.neighbours else [(self.images[i], self.masks[i])] * len(self.offsets())
            x = np.stack([self._array(image) for image, _ in paths])
            y = np.stack([self._array(mask) for _, mask in paths]) if self.label_context else self._array(self.masks[i])
            if with_distances:
                distance = np.stack([brain_distance(labels) for labels in y])
        x = torch.from_numpy(pad_slices(np.asarray(x, np.float32), self.frame, 0))
        y = pad_slices(np.asarray(y, np.uint8), self.frame, 2)
        if with_distances:
            y = np.concatenate([y, pad_slices(distance, self.frame, FAR)])
        return x, torch.from_numpy(y)

    def _distance(self, path, masks):
        """The 3-D distance outside the brain of a label volume (volumes.brain_distance), computed once
        while it is among the last MAX_DISTANCES asked for."""
        return recently_used(self._distances, path, self.MAX_DISTANCES, lambda: brain_distance(masks))


def recently_used(store, key, limit, make, keep=lambda value: True):
    """store[key] (an OrderedDict, most recently used last), else make() kept there when keep(it) holds,
    the least recently used entry dropped past `limit`."""
    if key in store:
        store.move_to_end(key)
        return store[key]
    value = make()
    if keep(value):
        store[key] = value
        if len(store) > limit:
            store.popitem(last=False)
    return value


def neighbour(row, own, split):
    """(image, mask) files of a slice file's neighbour (its own where there is none): a neighbour of another
    split lends its pixels, never its labels."""
    if row is None:
        return own.image, own.mask
    return row.image, row.mask if row.split == split else own.mask


class Batches(torch.utils.data.Sampler):
    """Index batches of one pass in `order` (set before each pass): a DataLoader's batch_sampler."""

    def __init__(self, n, batch_size):
        self.order, self.batch_size = list(range(n)), batch_size

    def __iter__(self):
        return (self.order[i:i + self.batch_size] for i in range(0, len(self.order), self.batch_size))

    def __len__(self):
        return math.ceil(len(self.order) / self.batch_size)


class Feed:
    """The batches of one split on the device, in the order asked for.

    A split whose tensors fit `cache_bytes` is read once (in chunks, through the DataLoader) into device
    tensors and batched there, as a whole split in memory used to be; a larger one streams each pass from
    disk through a DataLoader (workers, pinned memory, prefetch). Both give the same batches.
    """

    def __init__(self, dataset, batch_size, device, workers=0, cache_bytes=0, channels_last=False):
        self.n, self.device, self.channels_last = len(dataset), device, channels_last
        self.batches = Batches(self.n, batch_size)
        self.loader = torch.utils.data.DataLoader(
            # Workers live for one pass: the train split's are gone before the test split's start scoring.
            dataset, batch_sampler=self.batches, num_workers=workers, pin_memory=device.type == "cuda",
            prefetch_factor=4 if workers else None,
            generator=torch.Generator())  # workers' seeds: never a draw from the training's global RNG
        x0, y0 = dataset[0] if self.n else (torch.zeros(1, 1, 1), torch.zeros(1, 1, dtype=torch.uint8))
        self.nbytes = self.n * (x0.numel() * x0.element_size() + y0.numel() * y0.element_size())
        self.cached = None
        if 0 < self.nbytes <= cache_bytes:
            x = torch.empty((self.n, *x0.shape), dtype=x0.dtype, device=device)
            y = torch.empty((self.n, *y0.shape), dtype=y0.dtype, device=device)
            i = 0
            for xb, yb in self.loader:
                x[i:i + len(xb)].copy_(xb, non_blocking=True)
                y[i:i + len(yb)].copy_(yb, non_blocking=True)
                i += len(xb)
            self.cached = (self.to_layout(x), y)

    def to_layout(self, x):
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(self, order=None):
        """Yield (images, masks) batches on the device of the items in `order` (default: all, as they are):
        a permutation of the split, or a process's share of it."""
        order = torch.arange(self.n) if order is None else order
        bs = self.batches.batch_size
        if self.cached is not None:
            x, y = self.cached
            order = order.to(self.device)
            for i in range(0, len(order), bs):
                yield x[order[i:i + bs]], y[order[i:i + bs]]
            return
        self.batches.order = order.tolist()
        for xb, yb in self.loader:
            yield self.to_layout(xb.to(self.device, non_blocking=True)), yb.to(self.device, non_blocking=True)

    def __len__(self):
        return math.ceil(self.n / self.batches.batch_size)
