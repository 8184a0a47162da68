import numpy as np
import torch

from mriseg.metrics import confusion_matrix, scores, tutorial_iou


def test_tutorial_iou_matches_a_hand_computation():
    target = torch.tensor([[[0, 0], [1, 2]], [[1, 1], [1, 1]]])
    logits = torch.full((2, 3, 2, 2), -5.0)
    logits[0, 0, 0, 0] = 5  # image 0: WM predicted on 1 of 2 WM pixels, GM right
    logits[0, 1, 1, 0] = 5
    logits[1, 1, :, :1] = 5  # image 1: GM on 2 of 4 pixels; no WM anywhere -> IoU 1 (smoothing)
    # WM: image0 1/2, image1 (0+e)/(0+e)=1 -> 0.75; GM: image0 1, image1 0.5 -> 0.75
    assert torch.isclose(tutorial_iou(logits, target), torch.tensor(0.75))


def test_confusion_matrix_and_scores_agree_with_numpy():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, (4, 8, 8))
    logits = rng.normal(size=(4, 3, 8, 8))
    cm = confusion_matrix(torch.from_numpy(logits), torch.from_numpy(target)).numpy()
    pred = logits.argmax(1)
    for t in range(3):
        for p in range(3):
            assert cm[t, p] == ((target == t) & (pred == p)).sum()
    s = scores(torch.from_numpy(cm))
    tp = ((target == 0) & (pred == 0)).sum()
    union = ((target == 0) | (pred == 0)).sum()
    assert np.isclose(s["iou_white_matter"], tp / union)
    assert np.isclose(s["dice_white_matter"], 2 * tp / ((target == 0).sum() + (pred == 0).sum()))
