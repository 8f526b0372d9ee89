"""`unisegdiff uncertainty`: entropy maps of nnU-Net's saved probabilities as images."""
import csv

import numpy as np
import pytest
from PIL import Image

from nnunet_unisegdiff import cli
from nnunet_unisegdiff.evaluation.uncertainty import (
    colormap_lut,
    entropy_map,
    load_probabilities,
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
