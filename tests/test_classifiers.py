"""Melception (shapes, names, size, feature dict) and load_classifier for both classifiers and layouts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.melception import FEATURE_NAMES, Melception
from models.vggishish import VGGishish
from pipeline.build.classifier import load_classifier
from pipeline.checkpoints.format import save_checkpoint
from tests.helpers import SMALL_VGG, fast_melception


@pytest.fixture(scope="module")
def melception():
    return fast_melception(9).eval()


def test_melception_size_and_torchvision_names():
    with torch.device("meta"):
        model = Melception(num_classes=309)
    assert sum(p.numel() for p in model.parameters()) == 25_213_450
    keys = set(model.state_dict())
    for key in ("Conv2d_1a_3x3.conv.weight", "Conv2d_1a_3x3.bn.running_var", "Mixed_5b.branch1x1.conv.weight",
                "Mixed_5b.branch_pool.bn.num_batches_tracked", "Mixed_6e.branch7x7dbl_5.conv.weight",
                "Mixed_7c.branch3x3dbl_3b.bn.bias", "AuxLogits.conv0.conv.weight", "AuxLogits.conv1.bn.weight",
                "AuxLogits.fc.weight", "fc.weight", "fc.bias"):
        assert key in keys, key
    assert tuple(model.state_dict()["Conv2d_1a_3x3.conv.weight"].shape) == (32, 1, 3, 3)
    assert not any(k.startswith(("maxpool", "avgpool", "dropout")) for k in keys)


def test_melception_layer_shapes_match_the_spec_table():
    expected = {"Conv2d_1a_3x3": (32, 39, 423), "Conv2d_2b_3x3": (64, 37, 421), "Conv2d_4a_3x3": (192, 35, 419),
                "Mixed_5d": (288, 35, 419), "Mixed_6a": (768, 17, 209), "Mixed_6e": (768, 17, 209),
                "Mixed_7a": (1280, 8, 104), "Mixed_7c": (2048, 8, 104)}
    with torch.device("meta"):
        model = Melception(num_classes=309, init_weights=False).eval()
    seen = {}
    for name in expected:
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.shape[1:]))
    with torch.device("meta"):
        feats = model.features(torch.empty(2, 80, 848))
    assert {k: tuple(v) for k, v in seen.items()} == expected
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "64": (2, 64), "192": (2, 192), "768": (2, 768), "2048": (2, 2048),
        "logits_unbiased": (2, 309), "logits": (2, 309)}


def test_melception_features_agree_with_forward(melception):
    x = torch.rand(1, 40, 48)  # any size >= 40 x 40 runs; small keeps the test fast
    with torch.no_grad():
        feats = melception.features(x)
        logits = melception(x)
        only = melception.features(x, names=["64", "192"])  # stops after the stem
    assert list(feats) == list(FEATURE_NAMES)
    torch.testing.assert_close(feats["logits"], logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats["logits_unbiased"] + melception.fc.bias, feats["logits"])
    torch.testing.assert_close(feats["logits_unbiased"], feats["2048"] @ melception.fc.weight.T)
    assert list(only) == ["64", "192"]
    torch.testing.assert_close(only["192"], feats["192"])
    assert (feats["2048"] >= 0).all()  # a pooled ReLU map
    with pytest.raises(ValueError, match="unknown"):
        melception.features(x, names=["pool3"])


def test_melception_training_returns_aux_logits():
    model = fast_melception(5).train()
    out = model(torch.rand(2, 1, 80, 80))
    assert out.logits.shape == (2, 5) and out.aux_logits.shape == (2, 5)


def _original_style(path, model):
    """The original's training checkpoint: numpy scalars in metrics, optimiser state, `model` state dict."""
    torch.save({"loss": 1.25, "metrics": {"mAP": np.mean([0.1, 0.2]), "accuracy_1": np.float32(0.3)},
                "epoch": 3, "optimizer": {"state": {}, "param_groups": [{"lr": 3e-4, "params": [0, 1]}]},
                "model": model.state_dict()}, path)


def test_load_original_melception_checkpoint(tmp_path, melception):
    _original_style(tmp_path / "melception-21-05-10T09-28-40.pt", melception)
    loaded = load_classifier(tmp_path / "melception-21-05-10T09-28-40.pt")
    assert isinstance(loaded, Melception) and not loaded.training and loaded.fc.out_features == 9
    x = torch.rand(1, 40, 48)  # any size >= 40 x 40 runs; small keeps the test fast
    with torch.no_grad():
        torch.testing.assert_close(loaded.features(x)["logits"], melception.features(x)["logits"])
    with pytest.raises(ValueError, match="vggishish"):
        load_classifier(tmp_path / "melception-21-05-10T09-28-40.pt", kind="vggishish")


def test_load_vggishish_ours_and_original(tmp_path):
    torch.manual_seed(0)
    model = VGGishish(**SMALL_VGG).eval()
    _original_style(tmp_path / "VGGishish-21-05-10.pt", model)
    save_checkpoint(tmp_path / "ours.pt", {"kind": "classifier", "model_args": {"arch": "vggishish", **SMALL_VGG},
                                           "state_dict": model.state_dict()})
    x = torch.rand(2, 80, 64)
    for name in ("VGGishish-21-05-10.pt", "ours.pt"):
        loaded = load_classifier(tmp_path / name, kind="vggishish")
        assert isinstance(loaded, VGGishish) and not loaded.training
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x))


def test_load_classifier_is_strict(tmp_path, melception):
    state = dict(melception.state_dict())
    del state["Mixed_6b.branch1x1.bn.running_mean"]
    state["extra.weight"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"Mixed_6b\.branch1x1\.bn\.running_mean.*extra\.weight"):
        load_classifier(tmp_path / "broken.pt")
    torch.save({"model": {"something.weight": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="architecture"):
        load_classifier(tmp_path / "other.pt")
