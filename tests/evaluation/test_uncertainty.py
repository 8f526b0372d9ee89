"""`unisegdiff uncertainty`: entropy maps of nnU-Net's saved probabilities as images."""
import csv

import numpy as np
import pytest
from PIL import Image

from nnunet_unisegdiff import cli
from nnunet_unisegdiff.evaluation.uncertainty import (
    colormap_lut,
    contour,
    entropy_map,
    load_probabilities,
    montage,
    overlay_rgb,
    write_uncertainty,
)


def binary_probs(p_fg: np.ndarray) -> np.ndarray:
    """(H, W) foreground probability -> nnU-Net's 2D layout (C=2, 1, H, W)."""
    return np.stack([1 - p_fg, p_fg])[:, None].astype(np.float32)


def levels_from_heatmap(rgb: np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """Invert the colour map: index of the nearest LUT colour per pixel."""
    lut = colormap_lut(cmap).astype(int)
    return np.abs(rgb[..., None, :].astype(int) - lut[None, None]).sum(-1).argmin(-1)


def test_entropy_is_zero_for_certain_pixels_and_one_at_one_half():
    p = np.array([0.0, 1.0, 0.5, 0.1, 0.9])
    h = entropy_map(np.stack([1 - p, p]))
    assert h[0] == 0 and h[1] == 0 and h[2] == pytest.approx(1.0)
    expected = -(0.1 * np.log2(0.1) + 0.9 * np.log2(0.9))
    assert h[3] == pytest.approx(expected, rel=1e-5) and h[4] == pytest.approx(expected, rel=1e-5)


def test_entropy_is_normalised_by_the_number_of_classes():
    uniform = np.full((3, 4, 4), 1 / 3)
    assert np.allclose(entropy_map(uniform), 1.0)
    onehot = np.zeros((3, 4, 4))
    onehot[2] = 1
    assert np.allclose(entropy_map(onehot), 0.0)


def test_load_probabilities_drops_the_singleton_axis_of_2d_predictions(tmp_path):
    np.savez(tmp_path / "a.npz", probabilities=binary_probs(np.zeros((5, 7))))
    assert load_probabilities(tmp_path / "a.npz").shape == (2, 5, 7)


def test_write_uncertainty_writes_images_of_the_label_size_whose_colours_encode_entropy(tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    h, w = 12, 20
    p = np.zeros((h, w))
    p[:, 5:10] = 1.0     # certain lesion
    p[:, 10:15] = 0.5    # maximal disagreement
    p[:, 15:] = 0.1
    np.savez_compressed(pred / "case_a.npz", probabilities=binary_probs(p))
    Image.fromarray((p > 0.5).astype(np.uint8)).save(pred / "case_a.png")
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(images / "case_a_0000.png")

    assert cli.main(["uncertainty", str(pred), "--images", str(images)]) == 0
    out = pred / "uncertainty"
    heat = np.asarray(Image.open(out / "case_a_uncertainty.png"))
    overlay = np.asarray(Image.open(out / "case_a_overlay.png"))
    assert heat.shape == (h, w, 3) and heat.dtype == np.uint8 and overlay.shape == (h, w, 3)
    levels = levels_from_heatmap(heat)
    assert (levels[:, :10] == 0).all(), "p = 0 or 1: no uncertainty"
    assert (levels[:, 10:15] == 255).all(), "p = 0.5: maximal uncertainty"
    expected = round(255 * -(0.1 * np.log2(0.1) + 0.9 * np.log2(0.9)))
    assert np.abs(levels[:, 15:] - expected).max() <= 1
    # certain background shows the image unchanged in the overlay
    assert (overlay[:, :4] == 120).all()
    rows = list(csv.DictReader(open(out / "uncertainty.csv")))
    assert rows[0]["case"] == "case_a"
    assert float(rows[0]["uncertain_fraction"]) == pytest.approx(5 / 20)


def test_no_png_is_written_beside_the_labels(tmp_path):
    """Evaluators read every .png of a prediction folder as a label file."""
    np.savez(tmp_path / "b.npz", probabilities=binary_probs(np.full((4, 4), 0.3)))
    write_uncertainty(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == []
    assert (tmp_path / "uncertainty" / "b_uncertainty.png").is_file()


def test_3d_probabilities_become_a_montage(tmp_path):
    probs = np.random.default_rng(0).dirichlet([1, 1], size=(5, 6, 7)).transpose(3, 0, 1, 2)
    np.savez(tmp_path / "vol.npz", probabilities=probs.astype(np.float32))
    with pytest.warns(UserWarning, match="no label file"):  # the NIfTI map needs a geometry
        rows = write_uncertainty(tmp_path, tmp_path / "out")
    img = np.asarray(Image.open(tmp_path / "out" / "vol_uncertainty.png"))
    assert img.shape == (2 * 6, 3 * 7, 3)  # 5 slices in a 3-column grid
    assert rows[0]["mean_entropy"] > 0


def test_missing_probabilities_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["uncertainty", str(tmp_path)]) == 2
    assert "--save_probabilities" in capsys.readouterr().err


def test_overlay_marks_the_predicted_contour():
    u = np.zeros((8, 8))
    pred = np.zeros((8, 8), int)
    pred[2:6, 2:6] = 1
    rgb = overlay_rgb(u, pred)
    assert tuple(rgb[2, 3]) == (0, 255, 255) and tuple(rgb[3, 3]) != (0, 255, 255)


def test_the_contour_is_the_mask_minus_its_4_neighbour_erosion_and_not_the_image_border():
    m = np.zeros((6, 5), bool)
    m[:4, 1:4] = True  # cut by the top border
    expected = m.copy()
    expected[:3, 2] = False  # interior: all four neighbours in the mask, the one above the image counted in
    assert np.array_equal(contour(m), expected)
    assert not contour(np.zeros((3, 3), bool)).any() and not contour(np.ones((3, 3), bool)).any()


def test_a_montage_keeps_the_dtype_and_leaves_empty_cells_zero():
    vol = np.arange(1, 5 * 2 * 3 + 1, dtype=np.float32).reshape(5, 2, 3)
    grid = montage(vol)
    assert grid.shape == (2 * 2, 3 * 3) and grid.dtype == np.float32  # 5 slices: 3 columns, 2 rows
    assert np.array_equal(grid[2:4, 3:6], vol[4]) and (grid[2:4, 6:] == 0).all()
    assert montage(vol, max_slices=2).shape == (2, 2 * 3)  # slices 0 and 4 side by side


# ----------------------------------------------------------------------------- confidence and review list
def _disc(h: int, w: int, radius: float, centre: tuple[float, float]) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def softmax_like(signed_distance: np.ndarray, temperature: float) -> np.ndarray:
    """A network's softmax: a sigmoid of the signed distance to the lesion border."""
    return 1 / (1 + np.exp(-signed_distance / temperature))


def planted_folder(folder, kind: str) -> list[str]:
    """Four cases in nnU-Net's 2D layout, written from most to least trustworthy: empty and
    confident, crisp lesion, soft lesion, empty with a near-lesion at 0.45 (a likely miss).
    `kind`: 'softmax' (sigmoid of the distance to the border) or 'vote' (mean of 20 draws whose
    discs move by a jitter, steps of 1/20 like a vote of UniSegDiff's draws)."""
    folder.mkdir(parents=True, exist_ok=True)
    h, w = 24, 24
    yy, xx = np.mgrid[:h, :w]
    dist = 6 - np.hypot(yy - 11.5, xx - 11.5)  # > 0 inside a disc of radius 6
    rng = np.random.default_rng(0)

    def lesion(temperature: float, jitter: float) -> np.ndarray:
        if kind == "softmax":
            return softmax_like(dist, temperature)
        return np.mean([_disc(h, w, 6 + jitter * rng.standard_normal(), tuple(11.5 + jitter * rng.standard_normal(2)))
                        for _ in range(20)], 0)

    near = np.full((h, w), 0.0 if kind == "vote" else 0.002)
    near[2:6, 2:6] = 0.45
    cases = {"a_empty": np.full((h, w), 0.0 if kind == "vote" else 0.002), "b_crisp": lesion(0.05, 0.01),
             "c_soft": lesion(1.0, 1.0), "d_near_miss": near}
    for name, p in cases.items():
        np.savez_compressed(folder / f"{name}.npz", probabilities=binary_probs(p))
        Image.fromarray((p > 0.5).astype(np.uint8)).save(folder / f"{name}.png")
    return list(cases)


@pytest.mark.parametrize("kind", ["softmax", "vote"])
def test_csv_has_a_confidence_column_that_ranks_the_planted_cases(tmp_path, kind):
    planted = planted_folder(tmp_path / kind, kind)
    write_uncertainty(tmp_path / kind)
    with open(tmp_path / kind / "uncertainty" / "uncertainty.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == planted  # the csv keeps the case order
    conf = {r["case"]: float(r["confidence"]) for r in rows}
    assert all(0.0 <= c <= 1.0 for c in conf.values())
    values = [conf[c] for c in planted]
    assert values[0] >= values[1] > values[2] > values[3]  # the empty map and the crisp lesion may tie at 1
    assert values[0] > 0.98 and values[1] > 0.95
    ranks = {r["case"]: int(r["review_rank"]) for r in rows}
    assert ranks["d_near_miss"] == 1 and ranks["c_soft"] == 2 and {ranks["a_empty"], ranks["b_crisp"]} == {3, 4}


def test_printed_review_list_is_ranked_least_confident_first(tmp_path, capsys):
    planted_folder(tmp_path, "softmax")
    assert cli.main(["uncertainty", str(tmp_path), "--review", "3"]) == 0
    out = capsys.readouterr().out
    lines = [ln.split() for ln in out.splitlines() if ln.startswith("  ") and ln.split()[0].isdigit()]
    assert [ln[-1] for ln in lines] == ["d_near_miss", "c_soft", "b_crisp"]
    assert [int(ln[0]) for ln in lines] == [1, 2, 3]
    confidences = [float(ln[1]) for ln in lines]
    assert confidences == sorted(confidences)
    assert "1 more in uncertainty.csv" in out


# ----------------------------------------------------------------------------- 3D: NIfTI with the input geometry
SPACING = (0.7, 1.3, 2.5)
ORIGIN = (-12.0, 40.5, 3.25)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # a 90 degree turn about z


def write_nifti(path, array: np.ndarray) -> None:
    import SimpleITK as sitk
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    sitk.WriteImage(image, str(path))


def volume_probs(shape=(5, 6, 7)) -> np.ndarray:
    return np.random.default_rng(0).dirichlet([1, 1], size=shape).transpose(3, 0, 1, 2).astype(np.float32)


def assert_geometry_and_values(path, probs):
    import SimpleITK as sitk
    image = sitk.ReadImage(str(path))
    assert image.GetSpacing() == pytest.approx(SPACING)
    assert image.GetOrigin() == pytest.approx(ORIGIN)
    assert image.GetDirection() == pytest.approx(DIRECTION)
    assert np.allclose(sitk.GetArrayFromImage(image), entropy_map(probs), atol=1e-6)


def test_3d_maps_are_nifti_with_the_geometry_of_the_predicted_label_file(tmp_path):
    probs = volume_probs()
    np.savez(tmp_path / "vol.npz", probabilities=probs)
    write_nifti(tmp_path / "vol.nii.gz", probs.argmax(0).astype(np.uint8))  # as nnUNetv2_predict writes it
    rows = write_uncertainty(tmp_path, tmp_path / "out")
    assert rows[0]["uncertainty_volume"] == "vol_uncertainty.nii.gz"
    assert_geometry_and_values(tmp_path / "out" / "vol_uncertainty.nii.gz", probs)


def test_3d_maps_take_the_image_geometry_when_there_is_no_label_file(tmp_path):
    pred, images = tmp_path / "pred", tmp_path / "images"
    pred.mkdir()
    images.mkdir()
    probs = volume_probs()
    np.savez(pred / "vol.npz", probabilities=probs)
    with pytest.warns(UserWarning, match="no label file or image"):
        assert write_uncertainty(pred)[0]["uncertainty_volume"] == ""
    write_nifti(images / "vol_0000.nii.gz", np.zeros(probs.shape[1:], np.float32))
    write_uncertainty(pred, images_dir=images)
    assert_geometry_and_values(pred / "uncertainty" / "vol_uncertainty.nii.gz", probs)


def test_3d_map_is_not_written_over_a_label_file_of_another_shape(tmp_path):
    probs = volume_probs()
    np.savez(tmp_path / "vol.npz", probabilities=probs)
    write_nifti(tmp_path / "vol.nii.gz", np.zeros((5, 6, 8), np.uint8))
    with pytest.warns(UserWarning, match="differs"):
        assert write_uncertainty(tmp_path)[0]["uncertainty_volume"] == ""
    assert not (tmp_path / "uncertainty" / "vol_uncertainty.nii.gz").exists()
