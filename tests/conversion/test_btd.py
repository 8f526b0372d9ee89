"""BTD converter: MATLAB v7.3 (HDF5) slices as h5py sees them (transposed, char-coded PID, 512-byte
MATLAB userblock), split over part folders and a still-zipped part, cvind.mat folds, bad inputs."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import read_png, verify_integrity

from nnunet_unisegdiff.conversion import btd
from nnunet_unisegdiff.conversion.common import BadPairError, LayoutError
from nnunet_unisegdiff.conversion.registry import convert

# slice number -> (PID as MATLAB stores it, tumour type, cvind fold, (H, W) in MATLAB)
SLICES = {
    1: ("100360", 1, 1, (40, 48)),
    2: ("100360", 1, 1, (40, 48)),
    3: ("MR040  ", 2, 2, (32, 32)),  # padded PID: decoded and stripped
    4: ("112649", 3, 3, (40, 48)),
    5: ("112649", 3, 3, (48, 40)),
    6: ("95", 2, 4, (32, 32)),
}
TUMOUR = 900  # int16 intensity of the enhancing tumour


def matlab_slice(n: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(image int16, tumorMask uint8) in MATLAB (row, column) orientation: an asymmetric tumour in
    the upper-right corner (a 4x5 block plus a one-pixel tail below its right end), bright in the
    image; one hot pixel of 30000 bottom-left (the robust window must ignore it)."""
    h, w = shape
    rng = np.random.default_rng(n)
    image = rng.normal(200, 40, shape).clip(0, 600).astype(np.int16)
    mask = np.zeros(shape, np.uint8)
    mask[1:5, w - 7:w - 2] = 1
    mask[5, w - 3] = 1
    image[mask == 1] = TUMOUR
    image[h - 1, 0] = 30000
    return image, mask


def write_mat(path: Path, image: np.ndarray, mask: np.ndarray, pid: str, tumour_type: int) -> None:
    """A MATLAB v7.3 file: HDF5 behind a 512-byte userblock with the MATLAB text header; MATLAB's
    column-major arrays appear transposed to h5py, a char row vector as uint16 codes of shape (n, 1)."""
    with h5py.File(path, "w", userblock_size=512) as f:
        g = f.create_group("cjdata")
        g.attrs["MATLAB_class"] = np.bytes_("struct")
        for name, data, cls in (
                ("image", image.T, "int16"),
                ("tumorMask", mask.T, "uint8"),
                ("label", np.array([[float(tumour_type)]]), "double"),
                ("PID", np.array([[ord(c)] for c in pid], np.uint16), "char"),
                ("tumorBorder", np.array([[1.0], [2.0], [3.0], [4.0]]), "double")):
            ds = g.create_dataset(name, data=data)
            ds.attrs["MATLAB_class"] = np.bytes_(cls)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Aug  3 10:00:00 2015 HDF5 schema 1.00 ."
    with open(path, "r+b") as fh:
        fh.write(header.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM")


def write_cvind(path: Path, folds: list[int]) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("cvind", data=np.array(folds, float).reshape(-1, 1))


def make_btd(root: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The figshare download: two unpacked parts (figshare and Kaggle folder names), one part still
    zipped (one member at the zip root, one in a folder), cvind.mat and README.txt."""
    expected = {}
    parts = {1: "brainTumorDataPublic_1-766", 2: "brainTumorDataPublic_1-766", 3: "brainTumorDataPublic_7671532"}
    staging = root.parent / "staging"
    staging.mkdir()
    for n, (pid, ttype, _, shape) in SLICES.items():
        image, mask = matlab_slice(n, shape)
        expected[n] = (image, mask)
        if n in parts:
            (root / parts[n]).mkdir(parents=True, exist_ok=True)
            write_mat(root / parts[n] / f"{n}.mat", image, mask, pid, ttype)
        else:
            write_mat(staging / f"{n}.mat", image, mask, pid, ttype)
    with zipfile.ZipFile(root / "brainTumorDataPublic_1533-2298.zip", "w") as zf:
        for n in (4, 5, 6):
            zf.write(staging / f"{n}.mat", f"{n}.mat" if n == 4 else f"brainTumorDataPublic_1533-2298/{n}.mat")
    write_cvind(root / "cvind.mat", [SLICES[n][2] for n in sorted(SLICES)])
    (root / "README.txt").write_text("This brain tumor dataset containing 3064 T1-weighted contrast-inhanced images")
    return expected


def test_transposition_round_trip_puts_tumour_at_the_same_place_in_image_and_mask(tmp_path, nnunet_env, monkeypatch):
    expected = make_btd(tmp_path / "src")
    out = convert("btd", tmp_path / "src", dataset_id=502, progress=False, quiet=True, folds=None)
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["numTraining"] == 6 and ds["channel_names"] == {"0": "MRI"}
    verify_integrity(out, monkeypatch)
    for n, (image, mask) in expected.items():
        img = read_png(out / "imagesTr" / f"BTD_{n:04d}_0000.png")
        lab = read_png(out / "labelsTr" / f"BTD_{n:04d}.png")
        # MATLAB orientation (rows, columns), not h5py's transposed view, for both arrays
        assert img.shape == lab.shape == image.shape
        assert np.array_equal(lab, mask)
        h, w = image.shape
        # independently known: the tumour is in the top rows, right columns, its tail below the right end
        assert lab[:6].sum() == lab.sum() == 21 and lab[:, : w - 7].sum() == 0 and lab[5, w - 3] == 1
        assert (img[lab == 1] == 255).all()  # the bright tumour sits under the mask
        assert img[h - 1, 0] == 255  # hot pixel clipped to the top of the window ...
        # ... without crushing the brain into black, as a min-max scale to the hot pixel would
        naive = (image[mask == 0].astype(float) - image.min()) / (image.max() - image.min()) * 255
        assert np.median(naive) < 3 and np.median(img[lab == 0]) > 20 and img[lab == 0].std() > 5


def test_pid_groups_tumour_types_and_zip_parts(tmp_path, nnunet_env):
    make_btd(tmp_path / "src")
    cases = list(btd.read(tmp_path / "src"))
    assert [c.case_id for c in cases] == [f"BTD_{n:04d}" for n in range(1, 7)]
    assert [c.group for c in cases] == ["100360", "100360", "MR040", "112649", "112649", "95"]
    assert "brainTumorDataPublic_1533-2298.zip" in cases[4].origin
    assert [btd.read_mat(r)["tumor_type"] for r in btd.find_mats(tmp_path / "src")[0]] == [1, 1, 2, 3, 3, 2]
    assert btd.decode_pid(np.array([[49], [50], [0], [32]], np.uint16)) == "12"


def test_unpacked_and_zipped_copy_of_a_part_is_read_once(tmp_path):
    make_btd(tmp_path / "src")
    (tmp_path / "src" / "brainTumorDataPublic_1533-2298").mkdir()
    with zipfile.ZipFile(tmp_path / "src" / "brainTumorDataPublic_1533-2298.zip") as zf:
        zf.extract("4.mat", tmp_path / "src" / "brainTumorDataPublic_1533-2298")
    refs, cvind = btd.find_mats(tmp_path / "src")
    assert [r.number for r in refs] == [1, 2, 3, 4, 5, 6]
    assert refs[3].member is None and cvind.name == "cvind.mat"


def test_cvind_folds_keep_each_patient_in_one_fold(tmp_path):
    make_btd(tmp_path / "src")
    splits = btd.cvind_splits(tmp_path / "src")
    assert [s["val"] for s in splits] == [["BTD_0001", "BTD_0002"], ["BTD_0003"], ["BTD_0004", "BTD_0005"],
                                          ["BTD_0006"]]
    for s in splits:
        assert sorted(s["train"] + s["val"]) == [f"BTD_{n:04d}" for n in range(1, 7)]


def test_unreadable_mat_names_the_file_and_leaves_no_dataset(tmp_path, nnunet_env):
    make_btd(tmp_path / "src")
    (tmp_path / "src" / "brainTumorDataPublic_7671532" / "7.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 200)
    with pytest.raises(BadPairError, match=r"7\.mat: unreadable, expected a MATLAB v7\.3 \(HDF5\) file"):
        convert("btd", tmp_path / "src", dataset_id=502, progress=False, quiet=True)
    assert list((nnunet_env / "nnUNet_raw").iterdir()) == []


def test_image_mask_shape_mismatch_names_the_file(tmp_path, nnunet_env):
    make_btd(tmp_path / "src")
    image, mask = matlab_slice(8, (32, 32))
    write_mat(tmp_path / "src" / "brainTumorDataPublic_1-766" / "8.mat", image, mask[:, :30], "7", 1)
    with pytest.raises(BadPairError, match=r"8\.mat: image shape \(32, 32\) != tumorMask shape \(32, 30\)"):
        convert("btd", tmp_path / "src", dataset_id=502, progress=False, quiet=True)
    assert list((nnunet_env / "nnUNet_raw").iterdir()) == []


def test_unknown_layouts_say_what_was_found(tmp_path):
    kaggle_png = tmp_path / "png"
    (kaggle_png / "images").mkdir(parents=True)
    (kaggle_png / "masks").mkdir()
    with pytest.raises(LayoutError, match="Kaggle PNG re-export"):
        list(btd.read(kaggle_png))
    fragments = tmp_path / "frag"
    fragments.mkdir()
    (fragments / "brainTumorDataPublic.z01").write_bytes(b"PK")
    with pytest.raises(LayoutError, match=r"zip -FF"):
        list(btd.read(fragments))


def test_cli_folds_cvind_writes_the_dataset_folds_and_keeps_tumour_types(tmp_path, nnunet_env, capsys):
    import argparse

    from nnunet_unisegdiff.conversion import cli

    make_btd(tmp_path / "src")
    parser = argparse.ArgumentParser(prog="unisegdiff")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["convert", "btd", str(tmp_path / "src"), "-d", "512", "--folds", "cvind", "-q"])
    assert args.func(args) == 0
    out = nnunet_env / "nnUNet_raw" / "Dataset512_BTD"
    splits = json.loads((nnunet_env / "nnUNet_preprocessed" / out.name / "splits_final.json").read_text())
    assert [s["val"] for s in splits] == [["BTD_0001", "BTD_0002"], ["BTD_0003"], ["BTD_0004", "BTD_0005"],
                                          ["BTD_0006"]]
    assert json.loads((out / "conversion_summary.json").read_text())["split_level"] == "given"
    table = json.loads((out / "sources.json").read_text())
    assert [table[f"BTD_{n:04d}"]["tumor_type"] for n in range(1, 7)] == [
        "meningioma", "meningioma", "glioma", "pituitary", "pituitary", "glioma"]
    assert (out / "sources.csv").read_text().splitlines()[0] == "case_id,source,group,subset,origin,tumor_type"


def test_cvind_folds_drop_skipped_slices(tmp_path, nnunet_env):
    make_btd(tmp_path / "src")
    (tmp_path / "src" / "brainTumorDataPublic_7671532" / "3.mat").write_bytes(b"not hdf5")
    out = convert("btd", tmp_path / "src", dataset_id=502, progress=False, quiet=True, folds="cvind", skip_bad=True)
    splits = json.loads((out / "splits_final.json").read_text())
    assert [s["val"] for s in splits] == [["BTD_0001", "BTD_0002"], ["BTD_0004", "BTD_0005"], ["BTD_0006"]]
    assert "3.mat" in json.loads((out / "conversion_summary.json").read_text())["bad_pairs_skipped"][0]
