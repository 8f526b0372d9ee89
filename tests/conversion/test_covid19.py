"""COVID-19 converter: Ma et al. volumes (HU Coronacases, 0-255 Radiopaedia, an irregular name,
a mask stored in another orientation, the combined-mask fallback, lung masks to ignore) and MedSeg
tr_im/tr_mask and rp_im/rp_msk stacks; slice filters with printed counts; bad inputs."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import read_png, verify_integrity

from nnunet_unisegdiff.conversion import covid19
from nnunet_unisegdiff.conversion.common import BadPairError, LayoutError, Orphan
from nnunet_unisegdiff.conversion.registry import convert

HU_LESION, HU_LUNG = 0, -800
# per volume: (lesion slices, empty slices) with effusion kept; 30 slices, 9 with lesion
COUNTS = {"coronacases_001": (2, 4), "coronacases_002": (1, 3), "coronacases_003": (1, 3),
          "radiopaedia_10_85902_1": (1, 4), "radiopaedia_10_85902_3": (0, 4), "medseg_tr": (3, 1),
          "medseg_rp_1": (1, 2)}


def save(path: Path, data: np.ndarray, affine=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))


def hu_volume(shape, lesion: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = rng.integers(-1024, 1500, shape).astype(np.int16)  # body, bone, air
    vol[2:-2, 2:-2] = HU_LUNG
    vol[lesion > 0] = HU_LESION
    return vol


def make_covid(src: Path) -> None:
    ma, inf = src / "COVID-19-CT-Seg_20cases", src / "Infection_Mask"
    # coronacases_001: LPS-like image (x and y flipped); its mask stored with x in RAS order,
    # i.e. the data flipped along axis 0 and an affine saying so. Lesion: patient right, anterior.
    lesion = np.zeros((16, 14, 6), np.uint8)
    lesion[0:4, 0:3, 2:4] = 1
    img_aff = np.diag([-1.0, -1.0, 2.5, 1.0])
    mask_aff = np.diag([1.0, -1.0, 2.5, 1.0])
    mask_aff[0, 3] = -15.0  # voxel i' = 15 - i sits at the same world x
    save(ma / "coronacases_org_001.nii.gz", hu_volume(lesion.shape, lesion, 1), img_aff)
    save(inf / "coronacases_001.nii.gz", lesion[::-1].copy(), mask_aff)
    save(src / "Lung_Mask" / "coronacases_001.nii.gz", np.full(lesion.shape, 2, np.uint8), img_aff)
    combined = np.zeros(lesion.shape, np.uint8)
    combined[..., 5] = 3  # ignored: Infection_Mask wins
    save(src / "Lung_and_Infection_Mask" / "coronacases_001.nii.gz", combined, img_aff)
    # irregular name, uncompressed .nii
    les2 = np.zeros((10, 10, 4), np.uint8)
    les2[3:6, 3:6, 0] = 1
    save(ma / "coronacases_org_case002.nii", hu_volume(les2.shape, les2, 2))
    save(inf / "coronacases_002.nii.gz", les2)
    # only a combined mask: infection = 3, lungs 1/2 everywhere else
    comb3 = np.ones((10, 10, 4), np.uint8)
    comb3[5:, :] = 2
    comb3[2:4, 2:4, 1] = 3
    save(ma / "coronacases_org_003.nii.gz", hu_volume(comb3.shape, comb3 == 3, 3))
    save(src / "Lung_and_Infection_Mask" / "coronacases_003.nii.gz", comb3)
    # Radiopaedia: already 0-255 floats; 10_85902_1 and 10_85902_3 are one patient
    rp = np.random.default_rng(4).uniform(0, 255, (12, 10, 5)).astype(np.float32)
    rp[0, 0, 0] = 77.0
    rp_les = np.zeros(rp.shape, np.float32)
    rp_les[4:8, 4:8, 1] = 1.0
    save(ma / "radiopaedia_org_covid-19-pneumonia-10_85902_1-dcm.nii.gz", rp)
    save(inf / "radiopaedia_10_85902_1.nii.gz", rp_les)
    save(ma / "radiopaedia_org_covid-19-pneumonia-10_85902_3-dcm.nii.gz", np.full((10, 10, 4), 90, np.float32))
    save(inf / "radiopaedia_10_85902_3.nii.gz", np.zeros((10, 10, 4), np.uint8))
    save(ma / "radiopaedia_org_covid-19-pneumonia-40_86625_0-dcm.nii.gz", np.zeros((8, 8, 2), np.float32))  # no mask
    # MedSeg dataset 1: 4 stacked slices, labels 1 GGO, 2 consolidation, 3 effusion
    med = src / "MedSeg"
    tr_mask = np.zeros((8, 8, 4), np.uint8)
    tr_mask[2:4, 2:4, 0] = 1
    tr_mask[5:7, 1:3, 1] = 3
    tr_mask[1:3, 5:7, 3] = 2
    save(med / "tr_im.nii.gz", hu_volume(tr_mask.shape, tr_mask, 5).astype(np.float32))
    save(med / "tr_mask.nii.gz", tr_mask.astype(np.float32))
    save(med / "val_im.nii.gz", np.zeros((8, 8, 2), np.float32))
    # MedSeg dataset 2: one 3-slice volume
    rp_mask = np.zeros((8, 8, 3), np.uint8)
    rp_mask[3:5, 3:5, 1] = 2
    save(med / "rp_im" / "1.nii.gz", hu_volume(rp_mask.shape, rp_mask, 6))
    save(med / "rp_msk" / "1.nii.gz", rp_mask)
    save(med / "rp_lung_msk" / "1.nii.gz", np.ones((8, 8, 3), np.uint8))


def run(tmp_path, capsys, **opts):
    out = convert("covid19", tmp_path / "src", dataset_id=505, progress=False, quiet=True, overwrite=True, **opts)
    return out, capsys.readouterr().out


def test_lesion_slices_by_default_with_printed_counts_and_patient_groups(tmp_path, nnunet_env, capsys, monkeypatch):
    make_covid(tmp_path / "src")
    out, printed = run(tmp_path, capsys)
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["numTraining"] == 9 and ds["channel_names"] == {"0": "CT_window"}
    verify_integrity(out, monkeypatch)
    assert "kept 9 lesion slices (of 9) and 0 empty slices (of 21)" in printed
    table = json.loads((out / "sources.json").read_text())
    assert sorted(table) == ["COVID_coronacases-001_z002", "COVID_coronacases-001_z003", "COVID_coronacases-002_z000",
                             "COVID_coronacases-003_z001", "COVID_medseg-rp-1_z001", "COVID_medseg-tr_z000",
                             "COVID_medseg-tr_z001", "COVID_medseg-tr_z003", "COVID_radiopaedia-10-85902-1_z001"]
    assert table["COVID_radiopaedia-10-85902-1_z001"]["group"] == "radiopaedia_10"
    assert table["COVID_medseg-tr_z001"]["group"] != table["COVID_medseg-tr_z003"]["group"]  # no patient IDs
    summary = json.loads((out / "conversion_summary.json").read_text())
    assert "radiopaedia_org_covid-19-pneumonia-40_86625_0-dcm.nii.gz" in summary["orphans_skipped"][0]
    for cid in table:
        lab = read_png(out / "labelsTr" / f"{cid}.png")
        assert lab.ndim == 2 and set(np.unique(lab)) == {0, 1}
        assert read_png(out / "imagesTr" / f"{cid}_0000.png").shape == lab.shape


def test_mask_in_another_orientation_lands_on_the_lesion_shown_upright(tmp_path, nnunet_env, capsys):
    make_covid(tmp_path / "src")
    out, printed = run(tmp_path, capsys)
    lab = read_png(out / "labelsTr" / "COVID_coronacases-001_z002.png")
    img = read_png(out / "imagesTr" / "COVID_coronacases-001_z002_0000.png")
    assert lab.shape == (14, 16)  # rows: y (anterior up), columns: x
    # the lesion (patient right, anterior) is at the top left: anterior up, patient right on the left
    expected = np.zeros((14, 16), np.uint8)
    expected[0:3, 0:4] = 1
    assert np.array_equal(lab, expected)
    # HU: lung window [-1350, 150]; the lesion (0 HU) and the lung (-800 HU) under the same pixels
    assert (img[lab == 1] == round(1350 / 1500 * 255)).all()
    assert (img[2:-2, 2:-2][lab[2:-2, 2:-2] == 0] == round(550 / 1500 * 255)).all()
    assert "coronacases_001: HU" in printed and "radiopaedia_10_85902_1: 0-255 greyscale" in printed


def test_radiopaedia_0_255_intensities_are_kept(tmp_path, nnunet_env, capsys):
    make_covid(tmp_path / "src")
    out, _ = run(tmp_path, capsys, slices="all")
    img = read_png(out / "imagesTr" / "COVID_radiopaedia-10-85902-1_z000_0000.png")
    # identity affine: RAS voxel (0, 0) is shown at the bottom right
    assert img[-1, -1] == 77
    assert (read_png(out / "imagesTr" / "COVID_radiopaedia-10-85902-3_z000_0000.png") == 90).all()


@pytest.mark.parametrize("opts, lesion, empty", [
    ({"slices": "all"}, 9, 21),
    ({"slices": "fraction", "empty_fraction": 0.5}, 9, 12),  # round-half-up per volume: 2+2+2+2+2+1+1
    ({"slices": "fraction", "empty_fraction": 0.0}, 9, 0),
    ({"slices": "lesion", "effusion": "drop"}, 8, 0)])
def test_slice_filters_keep_and_print_the_chosen_counts(tmp_path, nnunet_env, capsys, opts, lesion, empty):
    make_covid(tmp_path / "src")
    out, printed = run(tmp_path, capsys, **opts)
    summary = json.loads((out / "conversion_summary.json").read_text())
    assert summary["cases_written"] == lesion + empty and summary["empty_masks"] == empty
    assert f"kept {lesion} lesion slices" in printed and f"and {empty} empty slices" in printed


def test_fraction_is_deterministic_for_a_seed(tmp_path):
    make_covid(tmp_path / "src")
    ids = [[c.case_id for c in covid19.read(tmp_path / "src", slices="fraction", empty_fraction=0.5, seed=s)
            if not isinstance(c, Orphan)] for s in (1, 1, 2)]
    assert ids[0] == ids[1]
    assert len(ids[0]) == len(ids[2]) == 21


def test_option_errors():
    with pytest.raises(ValueError, match="needs --empty-fraction"):
        list(covid19.read(".", slices="fraction"))
    with pytest.raises(ValueError, match="only applies to --slices fraction"):
        list(covid19.read(".", slices="all", empty_fraction=0.3))


def test_shape_mismatch_names_both_files_and_leaves_no_dataset(tmp_path, nnunet_env):
    make_covid(tmp_path / "src")
    save(tmp_path / "src" / "Infection_Mask" / "radiopaedia_10_85902_3.nii.gz", np.zeros((10, 9, 4), np.uint8))
    with pytest.raises(BadPairError, match=r"radiopaedia_org_covid-19-pneumonia-10_85902_3-dcm\.nii\.gz / "
                                           r".*Infection_Mask/radiopaedia_10_85902_3\.nii\.gz: image shape "
                                           r"\(10, 10, 4\) != mask shape \(10, 9, 4\)"):
        convert("covid19", tmp_path / "src", dataset_id=505, progress=False, quiet=True)
    assert list((nnunet_env / "nnUNet_raw").iterdir()) == []


def test_corrupt_volume_names_the_file(tmp_path, nnunet_env):
    make_covid(tmp_path / "src")
    bad = tmp_path / "src" / "MedSeg" / "rp_msk" / "1.nii.gz"
    bad.write_bytes(bad.read_bytes()[:30])
    with pytest.raises(BadPairError, match=r"rp_msk/1\.nii\.gz: cannot read mask NIfTI"):
        convert("covid19", tmp_path / "src", dataset_id=505, progress=False, quiet=True)
    assert list((nnunet_env / "nnUNet_raw").iterdir()) == []


def test_zips_not_unpacked_is_a_layout_error(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "COVID-19-CT-Seg_20cases.zip").write_bytes(b"PK")
    with pytest.raises(LayoutError, match="unpack these first: COVID-19-CT-Seg_20cases.zip"):
        list(covid19.read(tmp_path / "src"))
