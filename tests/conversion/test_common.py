"""The shared converter contract: validation, atomic writing, overwrite refusal, summaries, splits, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from nnunet_unisegdiff.conversion import splits
from nnunet_unisegdiff.conversion.common import BadPairError, Case, DatasetExistsError, LayoutError, Orphan, lazy_case
from nnunet_unisegdiff.conversion.reading import pair_by_stem, read_image, read_mask, sanitize_id
from nnunet_unisegdiff.conversion.registry import BINARY, CONVERTER_MODULES, DEFAULT_IDS, RGB
from nnunet_unisegdiff.conversion.writer import DatasetDeclaration, load_summary, read_sources, write_dataset


def rgb(dataset_id: int, name: str, **kw) -> DatasetDeclaration:
    """A binary RGB dataset's declaration."""
    return DatasetDeclaration(dataset_id, name, channel_names=RGB, labels=BINARY, **kw)


pytestmark = pytest.mark.usefixtures("nnunet_env")


def _case(i, h=12, w=16, group=None, empty=False):
    rng = np.random.default_rng(i)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    lab = np.zeros((h, w), np.uint8)
    if not empty:
        lab[2:6, 3:9] = 1
    return Case(f"case_{i:03d}", img, lab, group=group, source="T", origin=f"src/{i}.png")


def _leftovers(root):
    return sorted(p.name for p in root.iterdir())


def test_written_dataset_has_nnunet_layout_tables_and_passes_integrity_check(nnunet_env):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    cases = [_case(i, group=f"p{i // 3}", empty=(i == 4)) for i in range(10)] + [Orphan("x/lonely.png")]
    out = write_dataset(cases, rgb(590, "Unit", folds="5"), progress=False, quiet=True)
    assert out == nnunet_env / "nnUNet_raw" / "Dataset590_Unit"
    assert sorted(p.name for p in (out / "imagesTr").iterdir())[0] == "case_000_0000.png"
    assert len(list((out / "labelsTr").iterdir())) == 10
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["numTraining"] == 10 and dj["file_ending"] == ".png"
    assert dj["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert read_sources(out)["case_003"] == {"source": "T", "group": "p1", "subset": "Tr", "origin": "src/3.png"}
    assert (out / "sources.csv").read_text().splitlines()[0] == "case_id,source,group,subset,origin"
    s = load_summary(out)
    assert (s["cases_written"], s["empty_masks"], len(s["orphans_skipped"]), s["groups_found"]) == (10, 1, 1, 4)
    assert s["split_level"] == "image"  # 4 groups < 5 folds: falls back, and says so
    assert (nnunet_env / "nnUNet_preprocessed" / "Dataset590_Unit" / "splits_final.json").is_file()
    assert np.asarray(Image.open(out / "labelsTr" / "case_000.png")).max() == 1
    verify_dataset_integrity(str(out), num_processes=1)


def test_bad_pair_in_the_middle_names_the_file_and_leaves_nothing_behind(nnunet_env, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    bad = lazy_case("case_bad", lambda: (read_image(corrupt), np.zeros((12, 16), np.uint8)), origin=str(corrupt))
    cases = [_case(0), _case(1), bad, _case(2)]
    with pytest.raises(BadPairError, match="corrupt.png"):
        write_dataset(cases, rgb(591, "Bad"), progress=False, quiet=True)
    assert _leftovers(nnunet_env / "nnUNet_raw") == []
    assert _leftovers(nnunet_env / "nnUNet_preprocessed") == []


def test_skip_bad_reports_each_skip_and_writes_the_rest(nnunet_env):
    mismatch = Case("case_mis", np.zeros((12, 16, 3), np.uint8), np.zeros((12, 15), np.uint8), origin="m/mis.png")
    out = write_dataset([_case(0), mismatch, _case(1)], rgb(592, "Skip", folds=None), skip_bad=True,
                        progress=False, quiet=True)
    s = load_summary(out)
    assert s["cases_written"] == 2
    assert len(s["bad_pairs_skipped"]) == 1 and "m/mis.png" in s["bad_pairs_skipped"][0]
    assert "size mismatch" in s["bad_pairs_skipped"][0]


@pytest.mark.parametrize("image,label,message", [
    (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9), np.uint8), "size mismatch"),
    (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 4), np.uint8), "not single-channel"),
    (np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8), np.uint8), "drop the alpha"),
    (np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), "1 channel"),
    (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8), "dtype"),
    (np.zeros((8, 8, 3), np.uint8), np.full((8, 8), 255, np.uint8), "outside the declared"),
])
def test_validation_rejects_inconsistent_pairs(nnunet_env, image, label, message):
    with pytest.raises(BadPairError, match=message):
        write_dataset([Case("c", image, label, origin="f.png")], rgb(593, "V"), progress=False, quiet=True)
    assert _leftovers(nnunet_env / "nnUNet_raw") == []


def test_refuses_to_overwrite_an_existing_dataset_id_unless_asked(nnunet_env):
    write_dataset([_case(0)], rgb(594, "First", folds=None), progress=False, quiet=True)
    with pytest.raises(DatasetExistsError, match="Dataset594_First"):
        write_dataset([_case(1)], rgb(594, "Second"), progress=False, quiet=True)
    out = write_dataset([_case(1)], rgb(594, "Second", folds=None), overwrite=True, progress=False, quiet=True)
    assert _leftovers(nnunet_env / "nnUNet_raw") == ["Dataset594_Second"]
    assert (out / "imagesTr" / "case_001_0000.png").is_file()


def test_no_cases_and_duplicate_ids_are_errors(nnunet_env):
    with pytest.raises(LayoutError, match="no usable cases"):
        write_dataset([Orphan("a.png")], rgb(595, "E"), progress=False, quiet=True)
    with pytest.raises(BadPairError, match="duplicate case ID"):
        write_dataset([_case(0), _case(0)], rgb(595, "E"), progress=False, quiet=True)
    assert _leftovers(nnunet_env / "nnUNet_raw") == []


def test_group_level_splits_never_put_a_group_in_train_and_val():
    ids = [f"c{i:02d}" for i in range(40)]
    groups = [f"g{i % 9}" if i % 5 else None for i in range(40)]
    for n in (4, 5):
        s, level = splits.make_splits(ids, groups, n_folds=n, seed=3)
        assert level == "group" and len(s) == n
        assert splits.straddling_groups(s, dict(zip(ids, groups))) == set()
        assert sorted(c for f in s for c in f["val"]) == sorted(ids)  # each case validated exactly once
        assert max(len(f["val"]) for f in s) - min(len(f["val"]) for f in s) <= 5
    assert splits.make_splits(ids, groups, n_folds=4, seed=3) == splits.make_splits(ids, groups, n_folds=4, seed=3)


def test_image_level_5_folds_equal_nnunets_own_split_and_paper4_is_equal_sized():
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    ids = [f"c{i:02d}" for i in range(23)]
    s, level = splits.make_splits(ids, None, n_folds=splits.num_folds("5"))
    assert level == "image" and s == [{k: list(v) for k, v in f.items()} for f in generate_crossval_split(ids)]
    s4, _ = splits.make_splits(ids, [None] * 23, n_folds=splits.num_folds("paper4"), seed=1)
    assert sorted(len(f["val"]) for f in s4) == [5, 6, 6, 6]
    assert splits.make_splits(ids[:3], None, n_folds=5) == ([], "none")


def test_read_mask_reduces_every_png_mode_to_one_binary_channel(tmp_path):
    m = np.zeros((6, 7), np.uint8)
    m[1:4, 2:5] = 255
    variants = {
        "L": Image.fromarray(m),
        "LA": Image.fromarray(np.stack([m, np.full_like(m, 255)], -1), "LA"),
        "RGB": Image.fromarray(np.stack([m] * 3, -1)),
        "RGBA": Image.fromarray(np.stack([m, m, m, np.full_like(m, 255)], -1)),
        "P": Image.fromarray(m).convert("P"),
        "I16": Image.fromarray(m.astype(np.uint16) * 257),
        "01": Image.fromarray((m > 0).astype(np.uint8)),
        "1": Image.fromarray(m > 0),
    }
    for name, im in variants.items():
        im.save(tmp_path / f"{name}.png")
        got = read_mask(tmp_path / f"{name}.png")
        assert got.shape == (6, 7) and got.dtype == np.uint8, name
        assert np.array_equal(got, (m > 0).astype(np.uint8)), name
    rgba = np.zeros((5, 5, 4), np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(tmp_path / "img.png")
    assert read_image(tmp_path / "img.png").shape == (5, 5, 3)
    with pytest.raises(BadPairError, match="missing.png: file not found"):
        read_image(tmp_path / "missing.png")


def test_helpers_sanitise_ids_and_report_orphans(tmp_path):
    assert sanitize_id("benign (1)") == "benign_1"
    assert sanitize_id("GTxc2014144-4-400-005") == "GTxc2014144-4-400-005"
    pairs, orphans = pair_by_stem([tmp_path / "1.png", tmp_path / "2.png"],
                                  [tmp_path / "p1.tif", tmp_path / "p3.tif"], lambda s: "p" + s)
    assert [(a.name, b.name) for a, b in pairs] == [("1.png", "p1.tif")]
    assert sorted(o.problem for o in orphans) == ["image without mask", "mask without image"]


def test_default_ids_are_unique_and_clear_of_reserved_ones():
    assert set(DEFAULT_IDS) == set(CONVERTER_MODULES)
    assert len(set(DEFAULT_IDS.values())) == len(DEFAULT_IDS)
    assert all(500 <= v < 600 for v in DEFAULT_IDS.values())


def test_a_converter_gets_the_seed_exactly_when_its_spec_says_its_reader_samples():
    import inspect

    from nnunet_unisegdiff.conversion.registry import available_specs
    for spec in available_specs():
        readers = [spec.read] + ([spec.read_test] if spec.read_test else [])
        for reader in readers:
            assert ("seed" in inspect.signature(reader).parameters) == spec.seeded, (spec.name, reader.__name__)


def test_cli_reports_bad_input_in_one_line_and_exits_nonzero(nnunet_env, tmp_path, capsys):
    from nnunet_unisegdiff.cli import main
    rc = main(["convert", "busi", str(tmp_path / "nowhere"), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "nowhere" in err and "not found" in err
    (tmp_path / "empty").mkdir()
    rc = main(["convert", "busi", str(tmp_path / "empty"), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "empty" in err
    assert _leftovers(nnunet_env / "nnUNet_raw") == []


def test_an_unreadable_file_inside_a_lazy_loader_is_a_bad_pair_naming_its_origin(nnunet_env):
    def load():
        raise OSError("truncated HDF5 superblock")
    out = write_dataset([_case(0), lazy_case("broken", load, origin="vol/7.mat"), _case(1)],
                        rgb(596, "Lazy", folds=None), skip_bad=True, progress=False, quiet=True)
    assert load_summary(out)["bad_pairs_skipped"] == ["vol/7.mat: cannot read (truncated HDF5 superblock)"]
