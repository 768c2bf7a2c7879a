"""Metrics against hand-computed small examples, scikit-learn's ARI, and a plain-loop reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from adaslot import metrics as M


def masks(*rows: list[list[int]]) -> np.ndarray:
    return np.array(rows, dtype=bool)


# ---- hand-computed examples -------------------------------------------------------------------------

# Example A (2 x 4). GT: m0 = left two columns (4 px), m1 = top-right two pixels; bottom-right = background.
A_GT = masks([[1, 1, 0, 0], [1, 1, 0, 0]], [[0, 0, 1, 1], [0, 0, 0, 0]])
A_PRED = np.array([[0, 0, 1, 1], [0, 1, 2, 2]])
# IoU(m0,s0) = 3/(4+3-3) = 3/4, IoU(m0,s1) = 1/(4+3-1) = 1/6, IoU(m1,s1) = 2/(2+3-2) = 2/3, others 0.
# FG contingency rows m0, m1 / cols s0, s1: [[3, 1], [0, 2]], n = 6:
# sum n(n-1) = 6 + 2 = 8; rows a = (4, 2): 12 + 2 = 14; cols b = (3, 3): 12; n(n-1) = 30;
# expected = 14 * 12 / 30 = 5.6; max = (14 + 12) / 2 = 13; ARI = (8 - 5.6) / (13 - 5.6) = 12 / 37.


def test_example_a_by_hand():
    expected_iou = np.array([[3 / 4, 1 / 6, 0], [0, 2 / 3, 0]])
    np.testing.assert_allclose(M.iou_matrix(A_PRED, A_GT), expected_iou)
    labels, overlap = M.overlap_free_labels(A_GT)
    np.testing.assert_array_equal(labels, [[1, 1, 2, 2], [1, 1, 0, 0]])
    assert not overlap.any()
    assert M.fg_ari(A_PRED, labels) == pytest.approx(12 / 37)
    assert M.mbo(A_PRED, A_GT) == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert M.miou(A_PRED, A_GT) == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert M.mask_corloc(A_PRED, A_GT) == 1.0


def test_one_slot_for_two_objects_mbo_reuses_hungarian_does_not():
    gt = masks([[1, 1, 0, 0]], [[0, 0, 1, 1]])
    pred = np.zeros((1, 4), int)
    # IoU of the one slot with each object = 2/4; mBO reuses it: 0.5; Hungarian matches one: (0.5 + 0) / 2.
    assert M.mbo(pred, gt) == pytest.approx(0.5)
    assert M.miou(pred, gt) == pytest.approx(0.25)
    assert M.mask_corloc(pred, gt) == 0.0  # 0.5 is not > 0.5
    # FG-ARI: gt splits 4 px into 2 + 2, pred one cluster: rindex 12, a: 2 + 2 = 4, b: 12, n(n-1) 12;
    # expected = 4 * 12 / 12 = 4, max = 8, ARI = (4 - 4) / (8 - 4) = 0.
    assert M.fg_ari(pred, np.array([[1, 1, 2, 2]])) == pytest.approx(0.0)


def test_hungarian_picks_the_best_total():
    gt = masks([[1, 1, 0, 0]], [[0, 0, 1, 1]])
    pred = np.array([[0, 0, 0, 1]])
    # IoU(m0,s0) = 2/3, IoU(m1,s0) = 1/4, IoU(m1,s1) = 1/2: mBO = (2/3 + 1/2)/2 = 7/12; Hungarian: same pairs.
    assert M.mbo(pred, gt) == pytest.approx(7 / 12)
    assert M.miou(pred, gt) == pytest.approx(7 / 12)
    # A case where Hungarian must give up a best overlap: slot 0 is best for both objects.
    pred = np.array([[0, 0, 0, 0, 1, 1]])
    gt = masks([[1, 1, 1, 0, 0, 0]], [[0, 0, 0, 1, 1, 1]])
    # IoU(m0,s0) = 3/4, IoU(m1,s0) = 1/(3+4-1) = 1/6, IoU(m1,s1) = 2/3. mBO = (3/4 + 2/3)/2;
    # Hungarian: s0->m0, s1->m1 = same 17/24 (alternative s0->m1 = 1/6 only).
    assert M.mbo(pred, gt) == pytest.approx(17 / 24)
    assert M.miou(pred, gt) == pytest.approx(17 / 24)


def test_overlap_pixels_ignored_in_prediction_and_target():
    # m0 = px 0..2, m1 = px 2..4: px 2 is covered twice -> ignored. m2 = px 2 only -> then empty, dropped.
    gt = masks([[1, 1, 1, 0, 0]], [[0, 0, 1, 1, 1]], [[0, 0, 1, 0, 0]])
    pred = np.array([[0, 0, 1, 1, 1]])  # slot 1 covers the overlap pixel: must not hurt m1's IoU
    labels, overlap = M.overlap_free_labels(gt)
    np.testing.assert_array_equal(labels, [[1, 1, 0, 2, 2]])
    np.testing.assert_array_equal(overlap, [[0, 0, 1, 0, 0]])
    iou = M.iou_matrix(pred, gt)
    np.testing.assert_allclose(iou, [[1, 0], [0, 1]])  # 2 rows: m2 dropped
    assert M.mbo(pred, gt) == 1.0
    assert M.miou(pred, gt) == 1.0
    assert M.fg_ari(pred, labels) == 1.0
    scores = M.image_scores(pred, gt, categories=[1, 2, 3])
    assert scores["num_objects"] == 2
    assert scores["fg_ari"] == 1.0 and scores["mbo_i"] == 1.0


def test_background_pixels_count_in_slot_area():
    gt = masks([[1, 1, 0, 0]])
    pred = np.zeros((1, 4), int)  # one slot over object + 2 background px: IoU = 2/4
    assert M.mbo(pred, gt) == pytest.approx(0.5)
    assert M.fg_ari(pred, np.array([[1, 1, 0, 0]])) == 1.0  # one object, one slot: denominator 0 -> 1


def test_no_gt_image():
    pred = np.array([[0, 1], [2, 3]])
    empty = np.zeros((0, 2, 2), bool)
    assert M.fg_ari(pred, np.zeros((2, 2), int)) == 1.0  # official quirk: scores 1, counts
    for fn in (M.mbo, M.miou, M.mask_corloc):
        assert math.isnan(fn(pred, empty))
        assert math.isnan(fn(pred, np.zeros((2, 2, 2), bool)))  # all-empty masks are dropped too
    s = M.image_scores(pred, empty, categories=[])
    assert s["fg_ari"] == 1.0 and s["num_objects"] == 0
    assert all(math.isnan(s[k]) for k in ("mbo_i", "mbo_c", "miou", "mask_corloc"))


def test_class_masks_and_mbo_c():
    gt = masks([[1, 1, 0, 0]], [[0, 0, 1, 1]])
    pred = np.array([[0, 0, 0, 1]])
    cm = M.class_masks(gt, [5, 5])
    np.testing.assert_array_equal(cm, [[[1, 1, 1, 1]]])
    # one class mask of 4 px: IoU with s0 = 3/4, with s1 = 1/4 -> mBO^c = 3/4
    assert M.mbo(pred, cm) == pytest.approx(0.75)
    assert M.image_scores(pred, gt, categories=[5, 5])["mbo_c"] == pytest.approx(0.75)
    # two instances of different classes overlapping -> overlap ignored between classes
    gt2 = masks([[1, 1, 1, 0]], [[0, 0, 1, 1]])
    assert M.class_masks(gt2, [2, 1]).shape == (2, 1, 4)
    assert M.class_masks(gt2, [2, 1])[0, 0].tolist() == [False, False, True, True]  # sorted: category 1 first


def test_ari_degenerate_cases():
    one = np.ones((1, 4), int)
    assert M.fg_ari(np.zeros((1, 4), int), one) == 1.0  # both one cluster
    assert M.fg_ari(np.array([[0, 1, 2, 3]]), np.array([[1, 2, 3, 4]])) == 1.0  # both all singletons
    assert M.fg_ari(np.array([[0, 0, 1, 1]]), one) == pytest.approx(0.0)
    assert M.fg_ari(np.array([[7]]), np.array([[3]])) == 1.0  # a single pixel


def test_slot_count_stats():
    s = M.slot_count_stats([1, 2, 3], [2, 4, 6])
    assert s["mean"] == 2.0
    assert s["histogram"] == [0, 1, 1, 1]
    assert s["pearson_r"] == pytest.approx(1.0)
    # x = (1, 2, 3), y = (3, 1, 2): dx = (-1, 0, 1), dy = (1, -1, 0); sum dx*dy = -1, |dx|^2 = |dy|^2 = 2
    assert M.slot_count_stats([1, 2, 3], [3, 1, 2])["pearson_r"] == pytest.approx(-0.5)
    assert math.isnan(M.slot_count_stats([2, 2], [1, 3])["pearson_r"])


def test_accumulator_skips_nan_but_ari_counts():
    acc = M.MetricAccumulator()
    acc.add({"fg_ari": 0.5, "mbo_i": 0.4, "mbo_c": 0.6, "miou": 0.2, "mask_corloc": 1.0, "num_objects": 3}, 4)
    acc.add({"fg_ari": 1.0, "mbo_i": math.nan, "mbo_c": math.nan, "miou": math.nan, "mask_corloc": math.nan,
             "num_objects": 0}, 2)
    s = acc.summary()
    assert s["fg_ari"] == pytest.approx(0.75)
    assert s["mbo_i"] == pytest.approx(0.4) and s["mask_corloc"] == 1.0
    assert s["num_images"] == 2 and s["num_skipped"] == 1
    assert s["mean_kept_slots"] == 3.0 and s["kept_histogram"] == [0, 0, 1, 0, 1]
    assert s["kept_vs_objects_r"] == pytest.approx(1.0)


# ---- random cases against independent references ----------------------------------------------------


def _reference_iou(pred: np.ndarray, gt_masks: np.ndarray) -> np.ndarray:
    """Plain loops over masks: the definition, written without the contingency trick."""
    valid = gt_masks.sum(0) <= 1
    rows = []
    for g in gt_masks:
        g = g & valid
        if not g.any():
            continue
        row = []
        for k in range(pred.max() + 1):
            p = (pred == k) & valid
            union = (g | p).sum()
            row.append((g & p).sum() / union if union else 0.0)
        rows.append(row)
    return np.array(rows)


@pytest.mark.parametrize("seed", range(20))
def test_random_against_sklearn_and_loops(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 30, size=2)
    k = int(rng.integers(1, 8))
    pred = rng.integers(0, k, size=(h, w))
    if seed % 4 == 0:  # blocky predictions, closer to real masks
        pred = np.repeat(np.repeat(rng.integers(0, k, size=(h // 4 + 1, w // 4 + 1)), 4, 0), 4, 1)[:h, :w]
    n_obj = int(rng.integers(0, 6))
    gt_masks = rng.random((n_obj, h, w)) < rng.uniform(0.05, 0.6)
    labels, _ = M.overlap_free_labels(gt_masks)
    fg = labels > 0
    expected_ari = adjusted_rand_score(labels[fg], pred[fg]) if fg.any() else 1.0
    assert M.fg_ari(pred, labels) == pytest.approx(expected_ari, abs=1e-10)

    ref = _reference_iou(pred, gt_masks)
    got = M.iou_matrix(pred, gt_masks)
    if len(ref) == 0:
        assert len(got) == 0 and math.isnan(M.mbo(pred, gt_masks))
        return
    np.testing.assert_allclose(got[:, : ref.shape[1]], ref, atol=1e-12)
    assert M.mbo(pred, gt_masks) == pytest.approx(ref.max(1).mean())
    # Hungarian: brute force over slot permutations is small enough here (<= 7 slots, <= 5 objects)
    from itertools import permutations

    m, p = ref.shape
    padded = np.zeros((m, max(m, p)))
    padded[:, :p] = ref
    best = max(sum(padded[i, perm[i]] for i in range(m)) for perm in permutations(range(padded.shape[1]), m))
    assert M.miou(pred, gt_masks) == pytest.approx(best / m)


def test_sparse_ids_are_compacted():
    pred = np.array([[0, 10**6, 10**6, 5]])
    gt = np.array([[10**6, 10**6, 3, 3]])
    assert M.fg_ari(pred, gt) == pytest.approx(adjusted_rand_score(gt.ravel(), pred.ravel()))


# ---- object diagnostics (split / merge / background slots) ------------------------------------------

# Example D (4 x 6). GT: A = rows 0-1 x cols 0-2 (6 px), B = rows 0-1 x cols 3-4 (4 px),
# C = rows 2-3 x cols 0-1 (4 px); the other 10 px are background.
D_GT = np.zeros((3, 4, 6), bool)
D_GT[0, :2, :3] = True
D_GT[1, :2, 3:5] = True
D_GT[2, 2:, :2] = True
D_PRED = np.array([[0, 0, 1, 2, 2, 3],
                   [0, 0, 1, 2, 2, 3],
                   [2, 2, 3, 3, 3, 3],
                   [2, 2, 3, 3, 3, 4]])
# A: slot 0 wins 4/6, slot 1 2/6 (both >= 20 %: A is split); B: slot 2 4/4; C: slot 2 4/4 (slot 2 covers
# more than half of two objects: merged). Slot 3 wins 9 background px only, slot 4 one background px: two
# background slots. Active slots: 0..4 = 5.


def test_object_diagnostics_by_hand():
    d = M.object_diagnostics(D_PRED, D_GT)
    assert d == {"active_slots": 5, "split_objects": 1, "merge_slots": 1, "background_slots": 2}
    # hold share 0.4: slot 1's 2/6 of A no longer counts -> no split
    assert M.object_diagnostics(D_PRED, D_GT, hold_share=0.4)["split_objects"] == 0
    # cover share 0.7: slot 0's 4/6 of A is not cover, slot 2 still covers B and C whole
    assert M.object_diagnostics(D_PRED, D_GT, cover_share=0.7)["merge_slots"] == 1
    s = M.image_scores(D_PRED, D_GT)
    assert s["num_objects"] == 3 and s["split_objects"] == 1 and s["background_slots"] == 2


def test_object_diagnostics_thresholds_are_exact_fractions():
    gt = np.ones((1, 1, 15), bool)
    pred = np.array([[0] * 12 + [1] * 3])  # slot 1 holds 3/15 = exactly 20 % (0.2 * 15 > 3 in floats)
    assert M.object_diagnostics(pred, gt)["split_objects"] == 1
    # an object halved between two slots: held by both (split), covered (more than half) by neither
    gt = masks([[1, 1, 1, 1]])
    d = M.object_diagnostics(np.array([[0, 0, 1, 1]]), gt)
    assert d["split_objects"] == 1 and d["merge_slots"] == 0
    # one slot over 2 object px + 2 background px: exactly half background is not "mostly background"
    d = M.object_diagnostics(np.zeros((1, 4), int), masks([[1, 1, 0, 0]]))
    assert d == {"active_slots": 1, "split_objects": 0, "merge_slots": 0, "background_slots": 0}


def test_object_diagnostics_edge_cases():
    pred = np.array([[0, 1], [2, 2]])
    zero = {"split_objects": 0, "merge_slots": 0}
    # no GT: every active slot is on background
    assert M.object_diagnostics(pred, np.zeros((0, 2, 2), bool)) == {"active_slots": 3, **zero,
                                                                     "background_slots": 3}
    # two masks over every pixel: all pixels are ignored, so no slot has a pixel that could be background
    assert M.object_diagnostics(pred, np.ones((2, 2, 2), bool)) == {"active_slots": 3, **zero,
                                                                    "background_slots": 0}
    # one object held whole by one slot, background by another
    d = M.object_diagnostics(np.array([[0, 0, 1, 1]]), masks([[1, 1, 0, 0]]))
    assert d == {"active_slots": 2, "split_objects": 0, "merge_slots": 0, "background_slots": 1}
    # slot ids with no pixel are not active; a slot on overlap pixels only is active but not background
    gt = masks([[1, 1, 1, 0, 0]], [[0, 0, 1, 1, 1]])
    d = M.object_diagnostics(np.array([[0, 0, 5, 1, 1]]), gt)
    assert d == {"active_slots": 3, "split_objects": 0, "merge_slots": 0, "background_slots": 0}
    with pytest.raises(ValueError):
        M.object_diagnostics(pred, np.zeros((0, 2, 2), bool), hold_share=0)


def test_count_confusion():
    # objects (3, 0, 1, 3), slots (5, 2, 3, 4): rows 0..3, columns 0..5
    assert M.count_confusion([5, 2, 3, 4], [3, 0, 1, 3]) == [
        [0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1]]
    assert M.count_confusion([], []) == []


def _row(fg_ari, mbo_i, objects, active, split, merge, background):
    return {"fg_ari": fg_ari, "mbo_i": mbo_i, "mbo_c": math.nan, "miou": mbo_i, "mask_corloc": 1.0,
            "num_objects": objects, "active_slots": active, "split_objects": split, "merge_slots": merge,
            "background_slots": background}


def test_accumulator_object_diagnostics():
    import json

    rows = [_row(0.5, 0.6, 3, 5, 1, 1, 2), _row(1.0, math.nan, 0, 2, 0, 0, 2), _row(0.0, 0.5, 1, 3, 1, 0, 1),
            _row(0.2, 0.7, 3, 4, 0, 1, 1)]
    acc = M.MetricAccumulator()
    for r in rows:
        acc.add(r)
    s = acc.summary()
    assert s["split_rate"] == pytest.approx(2 / 7)  # (1 + 0 + 1 + 0) split of (3 + 0 + 1 + 3) objects
    assert s["merge_rate"] == pytest.approx(2 / 14)  # (1 + 0 + 0 + 1) of (5 + 2 + 3 + 4) active slots
    assert s["background_slots"] == 1.5 and s["mean_active_slots"] == 3.5 and s["mean_objects"] == 1.75
    # active (5, 2, 3, 4) vs objects (3, 0, 1, 3): dx = (1.5, -1.5, -0.5, 0.5),
    # dy = (1.25, -1.75, -0.75, 1.25); sum dx dy = 5.5, |dx|^2 = 5, |dy|^2 = 6.75
    assert s["active_vs_objects_r"] == pytest.approx(5.5 / math.sqrt(5 * 6.75))
    confusion = M.count_confusion([5, 2, 3, 4], [3, 0, 1, 3])
    assert s["count_confusion"] == {"slots": "active", "counts": confusion}
    per = s["per_object_count"]
    assert list(per) == ["0", "1", "3"]
    assert per["0"]["num_images"] == 1 and per["0"]["fg_ari"] == 1.0 and math.isnan(per["0"]["mbo_i"])
    assert per["1"] == {"num_images": 1, "fg_ari": 0.0, "mbo_i": 0.5, "split_rate": 1.0, "mean_slots": 3.0}
    assert per["3"]["fg_ari"] == pytest.approx(0.35) and per["3"]["mbo_i"] == pytest.approx(0.65)
    assert per["3"]["split_rate"] == pytest.approx(1 / 6) and per["3"]["mean_slots"] == 4.5
    assert "mean_kept_slots" not in s
    json.dumps(s)  # plain Python types only

    kept = M.MetricAccumulator()
    for r, k in zip(rows, (4, 2, 2, 4), strict=True):
        kept.add(r, k)
    s = kept.summary()
    assert s["count_confusion"]["slots"] == "kept" and s["count_confusion"]["counts"][3] == [0, 0, 0, 0, 2]
    assert s["per_object_count"]["3"]["mean_slots"] == 4.0 and s["mean_kept_slots"] == 3.0
    assert s["mean_active_slots"] == 3.5  # active slots are still reported beside the kept ones


def test_accumulator_from_image_scores():
    acc = M.MetricAccumulator()
    acc.add(M.image_scores(D_PRED, D_GT))
    acc.add(M.image_scores(np.array([[0, 0], [1, 1]]), np.zeros((0, 2, 2), bool)))  # no GT
    s = acc.summary()
    assert s["num_images"] == 2 and s["num_skipped"] == 1
    assert s["split_rate"] == pytest.approx(1 / 3) and s["merge_rate"] == pytest.approx(1 / 7)
    assert s["background_slots"] == 2.0  # (2 + 2) / 2
    assert s["count_confusion"]["counts"] == [[0, 0, 1, 0, 0, 0], [0] * 6, [0] * 6, [0, 0, 0, 0, 0, 1]]


def test_old_corloc_key_still_reads():
    """Files written before the rename (metrics.json, a sweep's score.json) carry `corloc`: it reads as
    mask_corloc."""
    from adaslot.sweep.results import RunRecord

    assert M.upgrade_metric_keys({"fg_ari": 0.5, "corloc": 1.0}) == {"fg_ari": 0.5, "mask_corloc": 1.0}
    assert M.upgrade_metric_keys({"corloc": 0.0, "mask_corloc": 1.0}) == {"mask_corloc": 1.0}
    old = RunRecord("a", "a", {}, 10, 10, [{"step": 10, "loss": 0.2, "steps_per_s": 5.0}],
                    {"step": 10, "eval": {"fg_ari": 0.4, "corloc": 0.75}})
    values = old.values()
    assert values["mask_corloc"] == 0.75 and "corloc" not in values
