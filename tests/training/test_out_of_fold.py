"""Out-of-fold conditions of phase B: the other folds' checkpoints are found (and refused when they trained
on another fold), no training case is conditioned by a CFENet that trained on it, the trainer's batch
conditions are the stitched out-of-fold features case by case, augmented when asked."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.utilities.crossval_split import generate_crossval_split
from test_trainer import Tiny, make, nnunet_dirs  # noqa: F401  (nnunet_dirs: the fixture)

from nnunet_unisegdiff.model.cfenet import CFENetTap
from nnunet_unisegdiff.training import trainer as trainer_module
from nnunet_unisegdiff.training.augmentation import SegmentationAugmentation, augment_conditions
from nnunet_unisegdiff.training.out_of_fold import RECORD, assign_condition_folds, cfenet_state_dict, find_other_folds

KEYS = [f"case_{i:03d}" for i in range(20)]


def save_fold(model: Path, fold: int, weights: dict, trained_fold=None, configuration="2d",
              name="checkpoint_final.pth") -> Path:
    (model / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
    path = model / f"fold_{fold}" / name
    torch.save({"network_weights": weights, "init_args": {"fold": fold if trained_fold is None else trained_fold,
                                                          "configuration": configuration}}, path)
    return path


def perturbed(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of `net` with noise on every parameter: another fold's network of the same architecture."""
    other = copy.deepcopy(net)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return other


def test_lookup_finds_the_other_folds_and_says_why_one_is_not_used(tmp_path):
    model = tmp_path / "nnUNetTrainer__nnUNetPlans__2d"
    for j in (0, 1, 2, 4):
        save_fold(model, j, {}, trained_fold=0 if j == 4 else None)
    save_fold(model, 3, {}, configuration="3d_fullres")
    lookup = find_other_folds(model / "fold_0" / "checkpoint_final.pth", 0, 5, "2d")
    assert sorted(lookup.found) == [1, 2] and lookup.found[1] == model / "fold_1" / "checkpoint_final.pth"
    assert set(lookup.missing) == {3, 4}
    assert "trained on fold 0" in lookup.missing[4] and "3d_fullres" in lookup.missing[3]
    (model / "fold_2" / "checkpoint_final.pth").unlink()
    lookup = find_other_folds(model / "fold_0" / "checkpoint_final.pth", 0, 5, "2d")
    assert lookup.missing[2] == "no fold_2/checkpoint_final.pth"
    assert "not used: fold 2 (no fold_2/checkpoint_final.pth)" in lookup.describe()
    # a CFENet checkpoint that is not this fold's: no sibling can be trusted
    assert not find_other_folds(model / "fold_1" / "checkpoint_final.pth", 0, 5, "2d").found


def test_no_training_case_is_conditioned_by_a_cfenet_that_trained_on_it():
    splits = generate_crossval_split(KEYS, seed=12345, n_splits=5)
    for fold in range(5):
        train = splits[fold]["train"]
        fold_of = assign_condition_folds(train, fold, splits, [0, 1, 2, 3, 4])
        assert set(fold_of) == set(train)
        for key, j in fold_of.items():
            assert j is not None and j != fold and key not in splits[j]["train"] and key in splits[j]["val"]
    # fold 3 missing: its validation cases keep fold 0's own condition, nobody else's
    fold_of = assign_condition_folds(splits[0]["train"], 0, splits, [1, 2, 4])
    assert {k for k, j in fold_of.items() if j is None} == set(splits[3]["val"])
    # custom splits whose validation sets overlap: any fold that did not train on the case will do
    custom = [{"train": KEYS[10:], "val": KEYS[:10]}, {"train": KEYS[5:], "val": KEYS[:5]},
              {"train": KEYS[:5] + KEYS[15:], "val": KEYS[5:15]}]
    fold_of = assign_condition_folds(KEYS[10:], 0, custom, [1, 2])
    assert all(j is None or k not in custom[j]["train"] for k, j in fold_of.items())
    assert fold_of["case_012"] == 2 and fold_of["case_017"] is None


def test_cfenet_weights_from_either_trainers_checkpoint():
    w = torch.ones(2)
    assert cfenet_state_dict({"network_weights": {"encoder.w": w}}) == {"encoder.w": w}
    assert cfenet_state_dict({"network_weights": {"module.encoder.w": w}}) == {"encoder.w": w}
    unisegdiff = {"network_weights": {"cfenet.encoder.w": w, "dnet.x": w, "dnet_trained": torch.tensor(True)}}
    assert cfenet_state_dict(unisegdiff) == {"encoder.w": w}


@pytest.fixture
def fold_model(request, monkeypatch, tmp_path):
    """Fold 0's trainer at its phase switch, with nnUNetTrainer-like checkpoints of folds 1, 2 and 4 (3 missing),
    splits_final.json over KEYS, and random preprocessed images of the keys."""
    request.getfixturevalue("nnunet_dirs")  # nnU-Net's folders, as test_trainer.py's trainers have them
    t = make(Tiny)
    splits = generate_crossval_split(KEYS, seed=12345, n_splits=5)
    Path(t.preprocessed_dataset_folder_base, "splits_final.json").write_text(json.dumps(splits))
    model = tmp_path / "nnUNetTrainer__nnUNetPlans__2d"
    torch.manual_seed(1)
    for j in (0, 1, 2, 4):
        save_fold(model, j, perturbed(t.composite.cfenet).state_dict())
    t.cfenet_source = str(model / "fold_0" / "checkpoint_final.pth")
    patch = tuple(t.configuration_manager.patch_size)
    # as nnU-Net stores a 2D case: (C, 1 slice, H, W), the image a little larger than the patch
    images = {k: np.random.default_rng(i).standard_normal((3, 1, patch[0] + 4, patch[1])).astype(np.float32)
              for i, k in enumerate(KEYS)}
    read = []

    def cases(dataset_class, folder, keys, prev=None):
        read.append(list(keys))
        for k in keys:
            yield k, images[k], np.zeros((1, *patch))
    monkeypatch.setattr(trainer_module, "validation_cases", cases)
    t.current_epoch = t.num_epochs_cfenet
    t.on_train_epoch_start()
    return t, splits, model, read


def test_trainer_conditions_each_case_by_its_out_of_fold_cfenet(fold_model):
    t, splits, model, read = fold_model
    keys = [str(k) for k in splits[0]["train"][:4] + splits[3]["val"][:2]]
    x = torch.randn(len(keys), 3, *t.configuration_manager.patch_size)
    cond = t._training_conditions(x, keys)
    oof = t._out_of_fold
    assert [oof.fold_of[k] is None for k in keys] == [False] * 4 + [True] * 2
    own = t.composite.condition(x)[1]
    for i, key in enumerate(keys):
        j = oof.fold_of[key]
        assert j is None or torch.load(model / f"fold_{j}" / "checkpoint_final.pth",
                                       weights_only=False)["init_args"]["fold"] == j
        if j is None:
            assert key in splits[3]["val"]
            expected = own
        else:
            assert key not in splits[j]["train"]
            other = t._load_other_cfenet(model / f"fold_{j}" / "checkpoint_final.pth")
            expected = oof.stitches[j](CFENetTap(other)(x[i:i + 1])[1])
            assert not torch.allclose(cond[0][i], own[0][i], atol=1e-3), "an out-of-fold case kept fold 0's own"
        for c, e in zip(cond, expected):
            assert torch.allclose(c[i], e[0 if j is not None else i], atol=1e-4)
    # fold 0's validation cases are neither conditioned for DNet's training nor fitted on
    assert set(oof.fold_of) == set(splits[0]["train"]) and not set(oof.fold_of) & set(splits[0]["val"])
    # stitches were fitted on cases that both networks trained on, never on fold 0's validation cases
    for fit_keys in read:
        assert not set(fit_keys) & set(splits[0]["val"])
    record = json.loads(Path(t.output_folder, RECORD).read_text())
    assert record["found"] == [1, 2, 4] and "fold_3" in record["missing"]["3"]
    assert record["cases_by_condition_fold"] == {
        **{str(j): len(splits[j]["val"]) for j in (1, 2, 4)}, "own": len(splits[3]["val"])}
    assert all(len(r) == len(cond) for r in record["stitch_r2"].values())
    log = Path(t.log_file).read_text()
    assert "not used: fold 3 (no fold_3/checkpoint_final.pth)" in log
    # the phase-B step trains on them; a batch without its case keys is refused
    out = t.train_step({"data": x, "target": (torch.rand(len(keys), 1, *x.shape[2:]) > .5).long(), "keys": keys})
    assert np.isfinite(out["loss"])
    with pytest.raises(ValueError, match="case key"):
        t._training_conditions(x, None)


def test_in_sample_variant_and_a_missing_model_keep_the_folds_own_conditions(fold_model, tmp_path):
    t, splits, model, _ = fold_model
    x = torch.randn(2, 3, *t.configuration_manager.patch_size)
    keys = splits[0]["train"][:2]
    t._out_of_fold, t.out_of_fold_conditions = False, False
    assert t._training_conditions(x, keys) is None
    assert "out_of_fold_conditions off" in Path(t.log_file).read_text()
    t._out_of_fold, t.out_of_fold_conditions = False, True
    t.cfenet_source = str(tmp_path / "elsewhere" / "fold_0" / "checkpoint_final.pth")
    assert t._training_conditions(x, keys) is None
    assert "in-sample" in Path(t.log_file).read_text()
    t.condition_noise = 0.5  # noise alone: fold 0's own features, perturbed
    noisy = t._training_conditions(x, keys)
    own = t.composite.condition(x)[1]
    assert all(n.shape == o.shape and not torch.allclose(n, o) for n, o in zip(noisy, own))


def test_condition_augmentation_follows_the_out_of_fold_features(fold_model):
    """The cascade augmentation acts on the conditions DNet trains on (out of fold here): CFENet's head reads
    the augmented segmentation of the stitched features, and the phase-B step trains on them."""
    t, splits, _, _ = fold_model
    keys = [str(k) for k in splits[0]["train"][:6]]
    x = torch.randn(len(keys), 3, *t.configuration_manager.patch_size)
    plain = t._training_conditions(x, keys)
    t.condition_augmentation = SegmentationAugmentation(p_binary_operator=1, p_per_label=1, p_remove_component=0)
    torch.manual_seed(0)
    np.random.seed(0)
    augmented = t._training_conditions(x, keys)
    head = t.composite.cfenet.decoder.seg_layers[-1]
    torch.manual_seed(0)
    np.random.seed(0)
    expected = augment_conditions(plain, head, t.condition_augmentation)
    assert all(torch.equal(a, e) for a, e in zip(augmented, expected))
    assert not torch.equal(head(augmented[0]).argmax(1), head(plain[0]).argmax(1))
    out = t.train_step({"data": x, "target": (torch.rand(len(keys), 1, *x.shape[2:]) > .5).long(), "keys": keys})
    assert np.isfinite(out["loss"])


def test_the_cfenet_source_survives_a_checkpoint(fold_model, tmp_path):
    t, *_ = fold_model
    path = tmp_path / "latest.pth"
    t.save_checkpoint(str(path))
    source, t.cfenet_source = t.cfenet_source, None
    t.load_checkpoint(str(path))
    assert t.cfenet_source == source


def test_unisegdiffs_own_folds_serve_when_cfenet_was_trained_in_this_run(fold_model):
    """No reused checkpoint: the other folds are looked for in this trainer's own model folder, and their
    UniSegDiff checkpoints give their CFENets (the composite's `cfenet.` weights)."""
    t, splits, _, _ = fold_model
    own_model = Path(t.output_folder_base)
    for j in (1, 2, 3, 4):
        weights = perturbed(t.composite).state_dict()
        save_fold(own_model, j, {k: v for k, v in weights.items() if k != "_extra_state"})
    t.cfenet_source, t._out_of_fold = None, False
    keys = [str(k) for k in splits[0]["train"][:3]]
    x = torch.randn(3, 3, *t.configuration_manager.patch_size)
    t._training_conditions(x, keys)
    assert sorted(t._out_of_fold.taps) == sorted({t._out_of_fold.fold_of[k] for k in splits[0]["train"]})
    record = json.loads(Path(t.output_folder, RECORD).read_text())
    assert record["found"] == [1, 2, 3, 4] and record["model_folder"] == str(own_model)
    other = t._load_other_cfenet(own_model / "fold_1" / "checkpoint_final.pth")
    expected = {k[len("cfenet."):]: v for k, v in torch.load(own_model / "fold_1" / "checkpoint_final.pth",
                                                              weights_only=False)["network_weights"].items()
                if k.startswith("cfenet.")}
    assert all(torch.equal(other.state_dict()[k], v) for k, v in expected.items())


def test_a_checkpoint_from_before_out_of_fold_conditions_resumes_and_predicts_as_before(fold_model, tmp_path):
    t, *_ = fold_model
    path = tmp_path / "old.pth"
    t.save_checkpoint(str(path))
    old = torch.load(path, weights_only=False)
    del old["unisegdiff"]["cfenet_source"]  # what checkpoints of earlier versions hold
    torch.save(old, path)
    t.composite.eval()
    x = torch.randn(1, 3, *t.configuration_manager.patch_size)
    before = t.composite(x)
    t.cfenet_source = None
    t.load_checkpoint(str(path))
    t.composite.eval()
    assert t.cfenet_source is None and torch.equal(t.composite(x), before)
