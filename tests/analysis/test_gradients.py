"""`unisegdiff gradients` (paper Fig. 1, top left) on tiny plans: which parameters each objective
trains, the staged objective's wiring, and the files the command writes."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from nnunet_unisegdiff import cli
from nnunet_unisegdiff.analysis import batches, gradients, measure, models
from nnunet_unisegdiff.model.plans import tiny_plans
from nnunet_unisegdiff.training.trainer import nnUNetTrainerUniSegDiff

DATASET_JSON = {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "lesion": 1},
                "numTraining": 4, "file_ending": ".png"}
FAST = ["--timesteps", "3", "--repeats", "1", "--batch-size", "2"]


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    network, pm, cm, seg_loss = models.build_model(nnUNetTrainerUniSegDiff, tiny_plans(2), DATASET_JSON, "2d")
    images, labels, _ = batches.synthetic_batch(2, 32)
    images, labels = torch.from_numpy(images), torch.from_numpy(labels)
    network.freeze_cfenet = True
    network.train()
    cond = network.condition(images)[1]
    eps = torch.randn((2, 2, 32, 32), generator=torch.Generator().manual_seed(0))
    return network, seg_loss, images, labels, cond, eps


def _grads(model, name, t):
    network, seg_loss, images, labels, cond, eps = model
    return measure.objective_gradients(network, cond, 2, labels, seg_loss, measure.objectives()[name], t, eps)


def test_each_target_trains_its_own_decoder_and_the_shared_encoder(tiny_model):
    eps, x0, staged = _grads(tiny_model, "eps", 100), _grads(tiny_model, "x0", 100), _grads(tiny_model, "staged", 100)
    assert not any(n.startswith("x0_decoder.") for n in eps) and any(n.startswith("eps_decoder.") for n in eps)
    assert not any(n.startswith("eps_decoder.") for n in x0) and any(n.startswith("x0_decoder.") for n in x0)
    assert any(n.startswith("x0_decoder.") for n in staged) and any(n.startswith("eps_decoder.") for n in staged)
    shared = [n for n in eps if n.startswith("encoder.")]
    assert shared and all(n in x0 for n in shared)
    assert all(float(eps[n].abs().sum()) > 0 for n in ("time_embedding.mlp.0.weight",))


def test_staged_gradient_in_the_pm_stage_is_the_sum_of_the_eps_and_x0_gradients(tiny_model):
    """PM: DNet is told the drawn t and alpha = beta = 1, so L_staged = L_eps + L_x0 on one forward."""
    t = 450
    eps, x0, staged = _grads(tiny_model, "eps", t), _grads(tiny_model, "x0", t), _grads(tiny_model, "staged", t)
    for name, g in staged.items():
        expected = eps.get(name, 0) + x0.get(name, 0)
        torch.testing.assert_close(g, expected, atol=1e-6, rtol=1e-4)


def test_staged_gradient_in_rs_differs_from_either_target(tiny_model):
    """RS: DNet is told 999 and the losses are weighted 1:3, so no plain target reproduces it."""
    staged, x0 = _grads(tiny_model, "staged", 800), _grads(tiny_model, "x0", 800)
    name = "encoder.stages.0.0.convs.0.conv.weight"
    assert not torch.allclose(staged[name], x0[name])


def test_magnitude_is_the_mean_absolute_element_and_the_norm():
    grads = {"a": torch.tensor([3.0, -4.0]), "b": torch.tensor([[0.0]])}
    mean_abs, norm = measure.magnitude(grads)
    assert mean_abs == pytest.approx(7 / 3) and norm == pytest.approx(5.0)


def test_command_on_a_preprocessed_folder_writes_plot_and_json(tmp_path, capsys):
    """A freshly initialised model from a preprocessed dataset's plans, on its preprocessed cases."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetNumpy

    folder = tmp_path / "Dataset999_Tiny"
    (folder / "nnUNetPlans_x").mkdir(parents=True)
    (folder / "nnUNetPlans.json").write_text(json.dumps(tiny_plans(2)))
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON))
    rng = np.random.default_rng(0)
    for i in range(3):
        seg = np.zeros((1, 1, 40, 36), np.int8)
        seg[0, 0, 10:20, 12:22] = 1
        nnUNetDatasetNumpy.save_case(rng.standard_normal((3, 1, 40, 36)).astype(np.float32), seg, {},
                                     str(folder / "nnUNetPlans_x" / f"case_{i}"))
    out = tmp_path / "out"
    assert cli.main(["gradients", str(folder), "-o", str(out), *FAST]) == 0
    assert "ratio small/large t" in capsys.readouterr().out
    profile = json.loads((out / "gradient_vs_timestep.json").read_text())
    assert profile["timesteps"] == [0, 500, 999]
    assert set(profile["objectives"]) == {"eps", "x0", "staged"}
    for data in profile["objectives"].values():
        values = np.array(data["mean_abs_grad"])
        assert values.shape == (3,) and np.isfinite(values).all() and (values > 0).all()
    assert profile["data"]["source"] == "preprocessed" and profile["data"]["patch_size"] == [32, 32]
    assert profile["model"]["source"] == "freshly initialised" and not profile["model"]["dnet_trained"]
    png = np.asarray(Image.open(out / "gradient_vs_timestep.png"))
    assert png.ndim == 3 and png.shape[1] > 600


def test_command_loads_a_trained_checkpoint_from_a_trainer_folder(tmp_path):
    plans = tiny_plans(2)
    network, *_ = models.build_model(nnUNetTrainerUniSegDiff, plans, DATASET_JSON, "2d")
    network.dnet_trained.fill_(True)
    folder = tmp_path / "nnUNetTrainerUniSegDiff__nnUNetPlans__2d"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON))
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainerUniSegDiff",
                "init_args": {"configuration": "2d"}, "current_epoch": 7},
               folder / "fold_0" / "checkpoint_final.pth")
    profile = gradients.run(folder, tmp_path / "out", data="synthetic", num_timesteps=2, repeats=1, batch_size=2)
    assert profile["model"]["source"] == "trained" and profile["model"]["dnet_trained"]
    assert profile["model"]["epoch"] == 7 and profile["data"]["source"].startswith("synthetic")


def test_unknown_folder_and_non_unisegdiff_trainer_are_refused(tmp_path, capsys):
    assert cli.main(["gradients", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "neither" in capsys.readouterr().err
    with pytest.raises(models.GradientError, match="not a UniSegDiff trainer"):
        models.find_trainer_class("nnUNetTrainerDemoBaseline")


def test_synthetic_plans_match_nnunets_plan_for_64px_rgb():
    arch = models.synthetic_plans(64)["configurations"]["2d"]["architecture"]["arch_kwargs"]
    assert arch["features_per_stage"] == [32, 64, 128, 256, 512] and arch["n_stages"] == 5


def test_crop_or_pad_centres_the_window():
    a = np.arange(10)[None].astype(float)
    assert batches.crop_or_pad(a, [4], [5.0]).tolist() == [[3, 4, 5, 6]]
    assert batches.crop_or_pad(a, [4], [0.0]).tolist() == [[0, 1, 2, 3]]
    padded = batches.crop_or_pad(a[:, :2], [4], [1.0])
    assert padded.shape == (1, 4) and sorted(padded[0].tolist()) == [0, 0, 0, 1]
