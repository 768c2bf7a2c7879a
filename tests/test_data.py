"""Data: transforms against torchvision, geometry both ways, the COCO dataset on messy files, ground truth."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from adaslot.data.coco import CocoDataset, collate
from adaslot.data.synthetic import SyntheticConfig, image_id_for, render_scene, scene_rng
from adaslot.data.transforms import (
    Geometry,
    ImageLoadError,
    compute_geometry,
    hflip,
    load_image,
    maps_to_original,
    resize_masks_nearest_exact,
    transform_image,
)
from adaslot.errors import AdaslotError
from adaslot.evaluate.masks import gt_at_side

# pycocotools 2.0.11 + numpy 2.4 warn inside mask decoding; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

torch.set_num_threads(1)


# ---------------------------------------------------------------- transforms and geometry

@pytest.mark.parametrize("h, w", [(480, 640), (640, 361), (299, 301), (224, 224), (100, 150)])
@pytest.mark.parametrize("antialias", [False, True])
def test_transform_equals_torchvision(h: int, w: int, antialias: bool) -> None:
    """The official pipeline: ToTensor -> Resize(S, BICUBIC) on a tensor -> clamp -> CenterCrop(S)."""
    import torchvision.transforms as T
    from torchvision.transforms import InterpolationMode

    img = Image.fromarray(np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8))
    ours, geom = transform_image(img, 224, antialias=antialias)
    ref = T.Resize(224, interpolation=InterpolationMode.BICUBIC, antialias=antialias)(T.ToTensor()(img))
    ref = T.CenterCrop(224)(ref.clamp(0, 1))
    assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
    assert torch.equal(ours, ref)
    assert 0.0 <= ours.min() and ours.max() <= 1.0
    assert torch.equal(hflip(ours), ours.flip(-1))
    # GT masks of the protocols: ocl's ResizeNearestExact == torchvision NEAREST_EXACT, then CenterCrop.
    m = torch.from_numpy(np.random.default_rng(1).integers(0, 2, (3, h, w)).astype(bool))
    ref_m = T.CenterCrop(320)(T.Resize(320, interpolation=InterpolationMode.NEAREST_EXACT)(m.to(torch.uint8)))
    assert torch.equal(resize_masks_nearest_exact(m, 320), ref_m.bool())


@pytest.mark.parametrize("h, w, size, expected", [
    # (orig h, w, S) -> (resized h, w, crop top, left): long side truncated, offset = Python round (half-even)
    (480, 640, 224, (224, 298, 0, 37)),
    (640, 361, 224, (397, 224, 86, 0)),  # (397 - 224) / 2 = 86.5 -> 86
    (427, 640, 224, (224, 335, 0, 56)),  # 335.58 -> 335; 55.5 -> 56
    (427, 640, 320, (320, 479, 0, 80)),  # 479.6 -> 479; 79.5 -> 80
    (224, 224, 224, (224, 224, 0, 0)),
])
def test_geometry_table(h: int, w: int, size: int, expected: tuple[int, int, int, int]) -> None:
    g = compute_geometry(h, w, size)
    assert (g.resized_h, g.resized_w, g.crop_top, g.crop_left) == expected
    assert (g.out_h, g.out_w) == (size, size)
    g2 = compute_geometry(h, w, size, crop=False)
    assert (g2.crop_top, g2.crop_left, g2.out_h, g2.out_w) == (0, 0, g2.resized_h, g2.resized_w)


def test_box_lands_where_geometry_says_and_back() -> None:
    h, w = 300, 500
    x0, y0, x1, y1 = 200, 60, 320, 180  # a white box on black, original pixels [y0:y1, x0:x1]
    a = np.zeros((h, w, 3), np.uint8)
    a[y0:y1, x0:x1] = 255
    x, g = transform_image(Image.fromarray(a), 224)
    assert g == Geometry(300, 500, 224, 373, 0, 74, 224, 224)
    ys, xs = np.nonzero(x[0].numpy() > 0.5)
    (ix0, ix1), (iy0, iy1) = g.to_input(np.array([x0, x1]), np.array([y0, y1]))
    assert xs.min() == pytest.approx(ix0, abs=1) and xs.max() + 1 == pytest.approx(ix1, abs=1)
    assert ys.min() == pytest.approx(iy0, abs=1) and ys.max() + 1 == pytest.approx(iy1, abs=1)
    # Round trip of coordinates, and the crop box in original pixels.
    px, py = np.array([0.0, 13.5, 224.0]), np.array([0.0, 100.25, 224.0])
    bx, by = g.to_input(*g.to_original(px, py))
    assert np.allclose(bx, px) and np.allclose(by, py)
    cx0, cy0, cx1, cy1 = g.crop_box_original()
    assert cx0 == pytest.approx(74 * 500 / 373) and cy0 == 0 and cy1 == pytest.approx(300)
    assert cx1 - cx0 == pytest.approx(224 * 500 / 373)
    top, left, bottom, right = g.crop_region_original()
    # crop x-extent [99.20, 399.46): pixel centres 99.5 .. 398.5 inside -> columns 99..398
    assert (top, bottom) == (0, 300) and left == 99 and right == 399
    # Paste the network-input image back onto original pixels: the box comes back where it was drawn.
    back, region = maps_to_original(x[:1], g)
    assert region == (top, left, bottom, right) and back.shape == (1, 300, 300)
    full = np.zeros((h, w), bool)
    full[top:bottom, left:right] = back[0].numpy() > 0.5
    truth = np.zeros((h, w), bool)
    truth[y0:y1, x0:x1] = True
    assert (full & truth).sum() / (full | truth).sum() > 0.97
    whole, region_all = maps_to_original(x[:1], g, full_image=True)
    assert whole.shape == (1, 300, 500) and region_all == (0, 0, 300, 500)
    assert torch.equal(whole[0, :, left:right], back[0])


def test_maps_to_original_equals_interpolate_on_identity_geometry() -> None:
    g = compute_geometry(224, 224, 224)
    alpha = torch.rand(5, 14, 14)
    ours, region = maps_to_original(alpha, g)
    ref = F.interpolate(alpha[None], size=(224, 224), mode="bilinear", align_corners=False)[0]
    assert region == (0, 0, 224, 224)
    assert torch.allclose(ours, ref, atol=1e-5)


# ---------------------------------------------------------------- messy files

def _jpeg_bytes(im: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


@pytest.fixture
def messy(synthetic_coco: Path, tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A copy of the tiny val split in which val images 0..9 are replaced by the usual real-world mess."""
    root = tmp_path / "messy"
    shutil.copytree(synthetic_coco, root)
    ann_path = root / "annotations" / "instances_val2017.json"
    coco = json.loads(ann_path.read_text())
    img_dir = root / "val2017"
    ids = {}

    def file_of(i: int) -> Path:
        return img_dir / f"{image_id_for('val', i):012d}.jpg"

    def original(i: int) -> Image.Image:
        return Image.open(file_of(i)).convert("RGB")

    ids["gray"] = image_id_for("val", 0)
    original(0).convert("L").save(file_of(0), "JPEG", quality=95)
    ids["cmyk"] = image_id_for("val", 1)
    original(1).convert("CMYK").save(file_of(1), "JPEG", quality=95)
    ids["png"] = image_id_for("val", 2)
    png = original(2).convert("P", palette=Image.ADAPTIVE, colors=64)
    png.info["transparency"] = 0
    png.save(file_of(2), "PNG")  # PNG content (palette + transparency) under a .jpg name
    ids["truncated"] = image_id_for("val", 3)
    data = file_of(3).read_bytes()
    file_of(3).write_bytes(data[: len(data) // 2])
    ids["missing"] = image_id_for("val", 4)
    file_of(4).unlink()
    ids["unannotated"] = image_id_for("val", 5)
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != ids["unannotated"]]
    # Extra images appended to the json: EXIF-rotated (two conventions), unreadable, wrong size.
    upright = Image.fromarray(np.tile(np.linspace(0, 255, 160, dtype=np.uint8)[None, :, None], (96, 1, 3)))
    upright.paste((255, 0, 0), (0, 0, 40, 30))  # red marker, top-left of the upright image (w 160, h 96)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers rotate 90 degrees clockwise to display it
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # raw pixels 96 wide, 160 high
    extra = [("exif", "exif.jpg", 160, 96), ("exif_raw", "exif_raw.jpg", 96, 160),
             ("unreadable", "text.jpg", 224, 224), ("size", "size.jpg", 300, 200)]
    (img_dir / "exif.jpg").write_bytes(_jpeg_bytes(stored, exif=exif))
    (img_dir / "exif_raw.jpg").write_bytes(_jpeg_bytes(stored, exif=exif))  # json gives the raw size
    (img_dir / "text.jpg").write_bytes(b"this is not an image\n" * 10)
    upright.save(img_dir / "size.jpg", "JPEG")
    for k, (name, fname, w, h) in enumerate(extra):
        ids[name] = 5000 + k
        coco["images"].append({"id": 5000 + k, "file_name": fname, "width": w, "height": h})
    ann_path.write_text(json.dumps(coco))
    return root, ids


def test_messy_files_handled_or_skipped(messy: tuple[Path, dict[str, int]], synthetic_coco: Path) -> None:
    root, ids = messy
    ds = CocoDataset.from_root(root, "val", size=64)
    clean = CocoDataset.from_root(synthetic_coco, "val", size=64)
    assert ds.num_listed == 6 + 4 and len(ds) == 9  # the missing file is left out up front
    assert [(s.image_id, s.reason, s.index) for s in ds.skips.items] == [(ids["missing"], "missing", None)]
    items = {ds.image_ids[i]: ds[i] for i in range(len(ds))}
    for i in range(len(ds)):
        ds.record(items[ds.image_ids[i]])
    ok = {k for k, it in items.items() if it["ok"]}
    assert ok == {ids[n] for n in ("gray", "cmyk", "png", "unannotated", "exif", "exif_raw")}
    reasons = {s.image_id: s.reason for s in ds.skips.items}
    assert reasons == {ids["missing"]: "missing", ids["truncated"]: "truncated",
                       ids["unreadable"]: "unreadable", ids["size"]: "size-mismatch"}
    assert ds.summary()["skipped_by_reason"] == {"missing": 1, "truncated": 1, "unreadable": 1,
                                                 "size-mismatch": 1}
    notes = ds.summary()["notes"]
    assert notes["converted-from-L"] == 1 and notes["converted-from-CMYK"] == 1
    assert notes["PNG-in-jpg"] == 1 and notes["exif-transposed"] == 1
    # Converted images still look like the originals (JPEG re-encoding aside).
    for name in ("cmyk", "png"):
        ref = clean[clean.index_of(ids[name])]["image"]
        assert (items[ids[name]]["image"] - ref).abs().mean() < 0.03, name
    gray = items[ids["gray"]]["image"]
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])
    # EXIF: annotations in the displayed frame -> rotated upright; in the raw frame -> left as stored.
    up = load_image(root / "val2017" / "exif.jpg", expected_wh=(160, 96)).image
    assert up.size == (160, 96) and np.asarray(up)[5, 5, 0] > 200 and np.asarray(up)[5, 5, 1] < 60
    raw = load_image(root / "val2017" / "exif_raw.jpg", expected_wh=(96, 160))
    assert raw.image.size == (96, 160) and not raw.exif_transposed
    # Unannotated image: kept, empty ground truth at original size.
    gt = ds.ground_truth(ids["unannotated"])
    assert gt.instance_masks.shape == (0, 224, 224) and gt.class_masks.shape == (0, 224, 224)


def test_strict_is_a_policy_of_the_loops(messy: tuple[Path, dict[str, int]]) -> None:
    """The dataset reports bad images (it never raises for one); opening a strict DataSpec refuses a
    missing image up front, and the loops stop at the first skip the workers report."""
    from adaslot.config import DataSpec
    from adaslot.data.coco import open_dataset

    root, ids = messy
    spec = DataSpec(root=str(root), split="val", strict=True)
    with pytest.raises(AdaslotError, match=r"image \d+ \(.*\): missing .*drop --strict"):
        open_dataset(spec, 224)
    (root / "val2017" / f"{ids['missing']:012d}.jpg").write_bytes(b"")  # now present but empty
    ds = open_dataset(spec, 224)
    bad = {ds[ds.index_of(ids[k])]["reason"] for k in ("missing", "truncated")}
    assert bad == {"unreadable", "truncated"} and not ds[ds.index_of(ids["missing"])]["ok"]


def test_skips_survive_a_multiworker_loader(messy: tuple[Path, dict[str, int]]) -> None:
    root, ids = messy
    ds = CocoDataset.from_root(root, "val", size=32, views=2)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
    seen = []
    for batch in loader:
        ds.record(batch)
        assert batch["image"].shape[1:] == (2, 3, 32, 32)
        assert torch.equal(batch["image"][:, 1], hflip(batch["image"][:, 0]))
        assert len(batch["geometry"]) == len(batch["index"]) == len(batch["image_id"])
        seen += batch["index"].tolist()
    skipped = sorted({s.index for s in ds.skips.items if s.index is not None})
    assert sorted(seen + skipped) == list(range(len(ds)))
    bad = sorted([ids["truncated"], ids["unreadable"], ids["size"]])
    assert sorted(ds.image_ids[i] for i in skipped) == bad
    assert ds.summary()["skipped"] == 4  # + the missing file
    for batch in loader:  # a second epoch meets the same bad files: still counted once
        ds.record(batch)
    assert ds.summary()["skipped"] == 4


def _bad_json(tmp_path: Path) -> Path:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    return bad


@pytest.mark.parametrize("open_it,msg", [
    (lambda tmp, root: CocoDataset.from_root(tmp / "nope", "val"), "not found"),
    (lambda tmp, root: CocoDataset.from_root(root, "test"), "instances_test2017.json not found"),
    (lambda tmp, root: CocoDataset(root / "val2017", _bad_json(tmp)), "not valid JSON"),
    (lambda tmp, root: CocoDataset(tmp / "none", root / "annotations" / "instances_val2017.json"),
     "image directory"),
], ids=["no-root", "no-split", "bad-json", "no-image-dir"])
def test_wrong_paths_are_one_line_errors(tmp_path: Path, synthetic_coco: Path, open_it, msg) -> None:
    with pytest.raises(AdaslotError, match=msg) as e:
        open_it(tmp_path, synthetic_coco)
    assert "\n" not in str(e.value)


def test_a_missing_image_is_a_one_line_load_error(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError) as e:
        load_image(tmp_path / "gone.jpg")
    assert e.value.reason == "missing" and "\n" not in str(e.value)


# ---------------------------------------------------------------- ground truth

def test_ground_truth_matches_drawn_scene_and_crowd_options(tmp_path: Path) -> None:
    from adaslot.data.make_synthetic import run_make_synthetic

    cfg = SyntheticConfig(out=str(tmp_path / "c"), num_train=0, num_val=6, image_size=96, seed=2,
                          crowd_prob=0.4, progress=False)
    run_make_synthetic(cfg)
    ds = CocoDataset.from_root(cfg.out, "val", size=64)
    n_crowd = n_all = 0
    for i in range(6):
        scene = render_scene(scene_rng(2, "val", i), cfg)
        gt = ds.ground_truth(image_id_for("val", i))
        assert np.array_equal(gt.instance_masks, scene.masks)
        assert np.array_equal(gt.category_ids, scene.category_ids)
        assert np.array_equal(gt.iscrowd, scene.iscrowd)
        for c, m in zip(gt.class_ids, gt.class_masks, strict=True):
            assert np.array_equal(m, scene.masks[scene.category_ids == c].any(0))
        no_crowd = ds.ground_truth(image_id_for("val", i), include_crowd=False)
        assert len(no_crowd.instance_masks) == int((~scene.iscrowd).sum())
        n_crowd += int(scene.iscrowd.sum())
        n_all += len(scene.masks)
        p = gt_at_side(gt.instance_masks, 320)
        assert p.shape == (len(scene.masks), 320, 320) and p.dtype == bool
    assert 0 < n_crowd < n_all


@pytest.mark.parametrize("mode", ["RGBA", "LA", "I;16", "1", "P", "CMYK", "L"])
def test_load_image_modes_become_rgb(mode: str, tmp_path: Path) -> None:
    base = np.zeros((20, 30, 3), np.uint8)
    base[:, 15:] = (200, 200, 200)  # dark left half, light right half
    im = Image.fromarray(base)
    if mode == "I;16":
        im = Image.fromarray(base[..., 0].astype(np.uint16) * 257)  # 16-bit greyscale
    else:
        im = im.convert(mode)
    path = tmp_path / "x.png"
    im.save(path, "TIFF" if mode == "CMYK" else "PNG")
    out = load_image(path, expected_wh=(30, 20))
    a = np.asarray(out.image)
    assert out.image.mode == "RGB" and a.shape == (20, 30, 3)
    assert a[:, :15].mean() < 30 and a[:, 15:].mean() > 170, mode
