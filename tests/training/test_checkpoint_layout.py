"""Models trained before a refactoring keep loading: nnU-Net's predictor rebuilds the network from
the trainer class named in the checkpoint and loads `network_weights` strictly, so the state-dict
keys and shapes the trainers build must stay those recorded in `data/state_dict_layout.json`
(written by the code of commit aecf9ac, before the package was laid out by role). Since then the
state dict also holds one non-tensor entry, `_extra_state`: the inference settings record, which
checkpoints without it do without (tests/model/test_settings_record.py)."""
import json
from pathlib import Path

import pytest
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_unisegdiff.model.plans import tiny_plans
from nnunet_unisegdiff.nnunet_ext import TRAINER_DIR

LAYOUT = json.loads((Path(__file__).parent / "data" / "state_dict_layout.json").read_text())


@pytest.mark.parametrize("entry", sorted(LAYOUT))
def test_trainer_builds_the_recorded_state_dict_layout(entry, monkeypatch):
    trainer_name, configuration = entry.split()
    monkeypatch.setenv("nnUNet_extTrainer", str(TRAINER_DIR))
    cls = recursive_find_trainer_class_by_name(trainer_name)  # as nnUNetv2_predict finds it
    dim = int(configuration[0])
    pm = PlansManager(tiny_plans(dim))
    net = cls.build_network_architecture(pm, pm.get_configuration(configuration), 3 if dim == 2 else 1, 2, True)
    state = net.state_dict()
    assert set(state.pop("_extra_state")) == {"format", "settings"}
    layout = {k: list(v.shape) for k, v in state.items()}
    expected = LAYOUT[entry]
    assert sorted(set(expected) - set(layout)) == [] and sorted(set(layout) - set(expected)) == []
    assert layout == expected
