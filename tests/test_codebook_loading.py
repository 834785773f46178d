"""Loading the original's codebook checkpoints and ours, strictly, with outputs equal to the original code's."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from models.lpaps import LPAPS
from models.vqgan_loss import VQLPAPSWithDiscriminator
from pipeline.build.codebook import build_codebook, codebook_checkpoint, infer_model_args, load_codebook
from pipeline.config.presets import preset
from tests.helpers import compose

CONF = Path(__file__).resolve().parents[1] / "conf" / "codebook"
TINY_LPAPS = [4, "MP", 4, "MP", 8, "MP", 8, "MP", 8]


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> bool:
    return bool((a - b).abs().max() <= rel * b.abs().max())


def test_original_small_checkpoint_reproduces_the_original_outputs(original_fixtures, caplog):
    with caplog.at_level(logging.INFO):
        model = load_codebook(original_fixtures / "codebook_small.ckpt")
    assert "ignoring 22 loss.* tensors" in caplog.text
    assert not model.training and model.loss is None
    config = json.loads((original_fixtures / "config_small.json").read_text())
    assert model.model_args["ddconfig"] == {**config["ddconfig"], "norm_groups": 32}
    assert (model.n_embed, model.embed_dim) == (config["n_embed"], config["embed_dim"])
    io = torch.load(original_fixtures / "codebook_small_io.pt", weights_only=True)
    with torch.no_grad():
        h = model.quant_conv(model.encoder(io["x"]))
        quant, _, (_, _, idx) = model.quantize(h)
        xrec = model.decode(quant)
        assert _close(h, io["h"])
        assert torch.equal(idx.view(2, 5, 13), io["indices"])
        assert _close(xrec, io["xrec"])
        assert _close(model.decode_code(io["indices"]), io["xrec"])


def test_original_checkpoint_with_loss_loads_the_discriminator(original_fixtures):
    model = load_codebook(original_fixtures / "codebook_small.ckpt", with_loss=True, loss_args={"disc_start": 7})
    assert isinstance(model.loss, VQLPAPSWithDiscriminator)
    assert model.loss.discriminator_iter_start == 7 and model.loss.perceptual_weight == 0
    raw = torch.load(original_fixtures / "codebook_small.ckpt", weights_only=True)["state_dict"]
    ours = model.state_dict()
    assert set(ours) == set(raw)
    assert all(torch.equal(ours[k], raw[k]) for k in raw)


@pytest.mark.parametrize("name", ["vas", "vggsound"])
def test_paper_configs_have_the_original_keys_and_shapes(original_fixtures, name):
    expected = json.loads((original_fixtures / "original_keys.json").read_text())[f"codebook_{name}"]
    cfg = compose("train_codebook", f"codebook={name}").codebook  # vggsound.yaml inherits vas.yaml
    cfg.loss.lpaps_trunk, cfg.loss.lpaps_stats = "random", None  # the release's random LPAPS
    with torch.device("meta"):  # 72 M parameters: shapes only, nothing allocated
        model = build_codebook(cfg.model, cfg.loss)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    # the shapes alone give back the config
    assert infer_model_args(model.state_dict()) == OmegaConf.to_container(cfg.model)


def _original_layout_ckpt(src: Path, path: Path, extra: dict | None = None) -> dict:
    """A Lightning-style file as the original writes: the small fixture's VQModel + discriminator keys, plus
    `loss.perceptual_loss.*` of a (tiny-trunk) LPAPS, as real releases have."""
    state = dict(torch.load(src, weights_only=True)["state_dict"])
    torch.manual_seed(3)
    lpaps = LPAPS(torch.rand(80), torch.rand(80) + 0.1, conv_layers=TINY_LPAPS)
    state.update({f"loss.perceptual_loss.{k}": v for k, v in lpaps.state_dict().items()})
    state.update(extra or {})
    torch.save({"state_dict": state, "epoch": 3, "global_step": 99}, path)
    return state


def test_original_layout_with_perceptual_keys_loads_strictly(original_fixtures, tmp_path):
    path = tmp_path / "last.pt"  # the extension says nothing: detection is by content
    state = _original_layout_ckpt(original_fixtures / "codebook_small.ckpt", path)
    assert any(k.startswith("loss.perceptual_loss.lin0.model.1.") for k in state)
    model = load_codebook(path, with_loss=True)
    assert isinstance(model.loss.perceptual_loss, LPAPS)
    assert model.loss.perceptual_loss.chns == [4, 4, 8, 8, 8] and model.loss.perceptual_weight == 1.0
    assert not any(p.requires_grad for p in model.loss.perceptual_loss.parameters())
    assert all(p.requires_grad for p in model.autoencoder_parameters())
    ours = model.state_dict()
    assert set(ours) == set(state) and all(torch.equal(ours[k], state[k]) for k in state)
    plain = load_codebook(path)  # inference: loss.* accepted and ignored
    assert plain.loss is None and not any(k.startswith("loss.") for k in plain.state_dict())


def test_unexpected_and_missing_keys_are_listed(original_fixtures, tmp_path):
    path = tmp_path / "bad.ckpt"
    extra = {"encoder.extra.weight": torch.zeros(1), "loss.other.w": torch.zeros(1)}
    _original_layout_ckpt(original_fixtures / "codebook_small.ckpt", path, extra=extra)
    with pytest.raises(ValueError, match=r"encoder\.extra\.weight") as err:
        load_codebook(path)
    assert "loss.other.w" in str(err.value)
    raw = torch.load(path, weights_only=True)
    del raw["state_dict"]["encoder.extra.weight"], raw["state_dict"]["loss.other.w"]
    del raw["state_dict"]["decoder.mid.attn_1.q.bias"]
    torch.save(raw, path)
    with pytest.raises(ValueError, match=r"missing keys \(1\): \['decoder\.mid\.attn_1\.q\.bias'\]"):
        load_codebook(path)


def test_our_checkpoint_round_trip(tmp_path):
    cfg = preset("codebook", "tiny")
    torch.manual_seed(0)
    model = build_codebook(cfg.model)
    loss = VQLPAPSWithDiscriminator(**{k: v for k, v in OmegaConf.to_container(cfg.loss).items()
                                       if not k.startswith("lpaps_")})
    ckpt = codebook_checkpoint(model, loss)
    assert ckpt["format"] == "specvqgan-pipeline" and ckpt["kind"] == "codebook"
    ckpt.update(step=12, optimizer={"state": {}})  # training keys the loader ignores
    torch.save(ckpt, tmp_path / "last.pt")
    again = load_codebook(tmp_path / "last.pt")
    assert again.model_args == model.model_args and again.model_args["ddconfig"]["norm_groups"] == 4
    sd = model.state_dict()
    assert all(torch.equal(again.state_dict()[k], sd[k]) for k in sd)
    with_loss = load_codebook(tmp_path / "last.pt", with_loss=True)
    assert with_loss.loss.config == loss.config and with_loss.loss.discriminator_iter_start == cfg.loss.disc_start
    x = torch.rand(1, 1, 80, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(again.encode_indices(x), model.eval().encode_indices(x))


def test_wrong_files_are_refused(tmp_path):
    torch.save({"format": "specvqgan-pipeline", "kind": "vocoder", "state_dict": {}}, tmp_path / "v.pt")
    with pytest.raises(ValueError, match="'vocoder' checkpoint"):
        load_codebook(tmp_path / "v.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="neither"):
        load_codebook(tmp_path / "w.pt")
    with pytest.raises(FileNotFoundError, match="codebook.ckpt"):
        load_codebook(tmp_path / "missing.pt")
    torch.save({"state_dict": {"first_stage_model.x": torch.zeros(1)}}, tmp_path / "t.ckpt")
    with pytest.raises(ValueError, match="load_transformer"):
        load_codebook(tmp_path / "t.ckpt")
