"""Unit tests of the codebook models: shapes, quantiser, straight-through gradients, loss, LPAPS."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from models.discriminator import NLayerDiscriminator
from models.lpaps import LPAPS
from models.vggishish import VGGishish
from models.vqgan import VectorQuantizer, VQModel
from models.vqgan_loss import VQLPAPSWithDiscriminator, hinge_d_loss, vanilla_d_loss
from pipeline.build.codebook import build_codebook
from pipeline.config.presets import preset
from tests.helpers import compose

CONF = Path(__file__).resolve().parents[1] / "conf" / "codebook"
TINY_LPAPS = [4, "MP", 4, "MP", 8, "MP", 8, "MP", 8]


def tiny_model(loss: bool = True, **loss_overrides) -> VQModel:
    cfg = preset("codebook", "tiny")
    torch.manual_seed(0)
    return build_codebook(cfg.model, {**OmegaConf.to_container(cfg.loss), **loss_overrides} if loss else None)


def test_paper_model_maps_80x848_to_5x53_codes():
    cfg = compose("train_codebook", "codebook=vggsound").codebook  # the preset inherits vas.yaml
    with torch.device("meta"):
        model = VQModel(**OmegaConf.to_container(cfg.model))
        x = torch.empty(1, 1, 80, 848)
        quant, _, (_, onehot, idx) = model.encode(x)
        xrec = model.decode(quant)
    assert quant.shape == (1, 256, 5, 53)
    assert idx.shape == (265, 1) and onehot.shape == (265, 1024)
    assert xrec.shape == (1, 1, 80, 848)
    assert model.grid(80, 848) == (5, 53)


def test_tiny_model_grid_and_roundtrip_shapes():
    model = tiny_model(loss=False).eval()
    x = torch.rand(1, 1, 80, 848) * 2 - 1
    with torch.no_grad():
        idx = model.encode_indices(x)
        xrec = model.decode_code(idx)
    assert idx.shape == (1, 5, 53) and idx.dtype == torch.long
    assert xrec.shape == x.shape


def test_code_assignment_is_nearest_neighbour_in_raster_order():
    torch.manual_seed(1)
    vq = VectorQuantizer(37, 8)
    vq.embedding.weight.data.normal_()
    z = torch.randn(3, 8, 5, 7)
    z_q, _, (_, onehot, idx) = vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 8)  # (B*5*7, 8), index f*7+t within an item
    brute = torch.cdist(flat, vq.embedding.weight).argmin(dim=1)
    assert torch.equal(idx.squeeze(1), brute)
    # the row lookup equals the original's one-hot @ codebook (then straight-through) exactly
    zp = z.permute(0, 2, 3, 1)
    original = zp + ((onehot @ vq.embedding.weight).view(zp.shape) - zp)
    assert torch.equal(z_q, original.permute(0, 3, 1, 2))
    assert torch.allclose(z_q[1, :, 2, 4], vq.embedding.weight[brute[1 * 35 + 2 * 7 + 4]], atol=1e-6)


def test_vq_loss_weights_beta_on_the_codebook_term():
    vq = VectorQuantizer(4, 2, beta=0.25)
    z = torch.randn(1, 2, 1, 3, requires_grad=True)
    _, loss, _ = vq(z)
    loss.backward()
    zq = vq.embedding.weight[vq(z)[2][2].squeeze(1)]  # (3, 2)
    zf = z.detach().permute(0, 2, 3, 1).reshape(-1, 2)
    mse = ((zq.detach() - zf) ** 2).mean()
    assert torch.allclose(loss, 1.25 * mse)
    # encoder side gets weight 1 (commitment), the codebook side beta = 0.25
    assert torch.allclose(z.grad.permute(0, 2, 3, 1).reshape(-1, 2), 2 * (zf - zq.detach()) / zf.numel())
    used = vq.embedding.weight.grad.abs().sum(dim=1) > 0
    assert used.any()


def test_straight_through_gradients_reach_the_encoder():
    model = tiny_model(loss=False)
    x = torch.rand(2, 1, 80, 32) * 2 - 1
    xrec, _ = model(x)
    xrec.abs().mean().backward()  # reconstruction only: no VQ loss term
    assert model.encoder.conv_in.weight.grad is not None
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quantize.embedding.weight.grad is None or model.quantize.embedding.weight.grad.abs().sum() == 0


def test_code_usage_is_tracked_but_not_saved():
    model = tiny_model(loss=False).eval()
    assert "code_counts" not in model.state_dict()
    with torch.no_grad():
        model.encode(torch.rand(2, 1, 80, 32))
    usage = model.code_usage()
    assert usage["count"] == 2 * 5 * 2
    assert 1.0 <= usage["perplexity"] <= 32 and 0.0 <= usage["dead_share"] < 1.0
    model.reset_code_usage()
    assert model.code_usage()["count"] == 0


def test_discriminator_patch_map_and_keys():
    d = NLayerDiscriminator(1, 8, 3)
    assert d(torch.randn(1, 1, 80, 848)).shape == (1, 1, 8, 104)
    convs = sorted(int(k.split(".")[1]) for k, v in d.state_dict().items() if k.endswith("weight") and v.dim() == 4)
    assert convs == [0, 2, 5, 8, 11]
    assert "main.2.bias" not in d.state_dict() and "main.11.bias" in d.state_dict()


def test_lpaps_is_zero_for_identical_inputs_and_frozen():
    torch.manual_seed(0)
    lp = LPAPS(torch.rand(80) * 0.3 + 0.25, torch.full((80,), 0.09), conv_layers=TINY_LPAPS).eval()
    x = torch.rand(2, 1, 80, 32) * 2 - 1
    assert lp(x, x).shape == (2, 1, 1, 1)
    assert torch.all(lp(x, x) == 0)
    assert torch.all(lp(x, x.flip(-1)) != 0)
    assert not any(p.requires_grad for p in lp.parameters())
    assert lp.scaling_layer.shift.shape == (1, 1, 80, 1)


def test_perceptual_loss_without_a_trunk_is_an_error():
    with pytest.raises(ValueError, match="lpaps_trunk"):
        tiny_model(perceptual_weight=1.0, lpaps_layers=TINY_LPAPS)


def test_lpaps_trunk_keys_match_vggishish_features():
    with torch.device("meta"):
        lp, clf = LPAPS(), VGGishish()
    feats = {k.split(".", 1)[1] for k in clf.state_dict() if k.startswith("features.")}
    trunk = {k.split(".", 1)[1] for k in lp.net.state_dict()}  # slice{k}.{i}.weight -> {i}.weight
    assert trunk == feats


def _loss_inputs(model, seed=0):
    torch.manual_seed(seed)
    x = torch.rand(2, 1, 80, 32) * 2 - 1
    xrec, qloss = model(x)
    return x, xrec, qloss


def test_generator_loss_before_disc_start_has_no_gan_term():
    model = tiny_model(disc_start=10, disc_weight=0.8, min_adapt_weight=1.0, max_adapt_weight=1.0)  # the paper's clamp
    x, xrec, qloss = _loss_inputs(model)
    loss, log = model.loss(qloss, x, xrec, 0, global_step=9, last_layer=model.get_last_layer())
    expected = (x - xrec).abs().mean() + qloss
    assert torch.allclose(loss, expected)
    assert log["train/disc_factor"] == 0 and torch.isclose(log["train/d_weight"], torch.tensor(0.8))
    assert set(log) == {f"train/{k}" for k in
                        ("total_loss", "quant_loss", "nll_loss", "rec_loss", "p_loss", "d_weight", "disc_factor",
                         "g_loss")}
    d_loss, dlog = model.loss(qloss, x, xrec, 1, global_step=9)
    assert d_loss == 0 and set(dlog) == {"train/disc_loss", "train/logits_real", "train/logits_fake"}


def test_generator_loss_adaptive_weight_after_disc_start():
    model = tiny_model(disc_start=10, disc_weight=0.8, min_adapt_weight=0.0, max_adapt_weight=1e4)  # the paper's weight
    x, xrec, qloss = _loss_inputs(model)
    loss, log = model.loss(qloss, x, xrec, 0, global_step=10, last_layer=model.get_last_layer())
    nll = (x - xrec).abs().mean()
    g = -model.loss.discriminator(xrec).mean()
    w = model.get_last_layer()
    gn = torch.autograd.grad(nll, w, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g, w, retain_graph=True)[0].norm()
    lam = 0.8 * gn / (gg + 1e-4)
    assert torch.allclose(log["train/d_weight"], lam, rtol=1e-4)
    assert torch.allclose(loss, nll + lam * g + qloss, rtol=1e-4)
    loss.backward()  # the graph survives the adaptive-weight gradients
    # paper clamp [1, 1]: the weight is disc_weight whatever the gradients
    model = tiny_model(disc_start=0, disc_weight=0.8, min_adapt_weight=1.0, max_adapt_weight=1.0)
    x, xrec, qloss = _loss_inputs(model)
    _, log = model.loss(qloss, x, xrec, 0, global_step=0, last_layer=model.get_last_layer())
    assert torch.isclose(log["train/d_weight"], torch.tensor(0.8)) and log["train/disc_factor"] == 1


def test_constant_adaptive_weight_fast_path_is_identical():
    grads = []
    for exact in (True, False):
        model = tiny_model(disc_start=0, min_adapt_weight=1.0, max_adapt_weight=1.0)  # paper clamp [1, 1]
        model.loss.exact_adaptive_grads = exact
        x, xrec, qloss = _loss_inputs(model)
        loss, log = model.loss(qloss, x, xrec, 0, global_step=3, last_layer=model.get_last_layer())
        loss.backward()
        grads.append((loss.detach(), log["train/d_weight"], [p.grad.clone() for p in model.autoencoder_parameters()]))
    (l0, w0, g0), (l1, w1, g1) = grads
    assert torch.equal(l0, l1) and torch.equal(w0, w1) and w0.dtype == w1.dtype
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))


def test_validation_loss_sets_adaptive_weight_to_zero():
    model = tiny_model(disc_start=0).eval()
    with torch.no_grad():
        x, xrec, qloss = _loss_inputs(model)
        loss, log = model.loss(qloss, x, xrec, 0, global_step=5, last_layer=model.get_last_layer(), split="val")
    assert log["val/d_weight"] == 0
    assert torch.allclose(loss, (x - xrec).abs().mean() + qloss)


def test_discriminator_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert torch.isclose(hinge_d_loss(real, fake), torch.tensor(0.5 * (0.25 + 0.75)))
    sp = torch.nn.functional.softplus
    assert torch.isclose(vanilla_d_loss(real, fake), 0.5 * (sp(-real).mean() + sp(fake).mean()))
    model = tiny_model(disc_start=0, disc_loss="vanilla")
    x, xrec, qloss = _loss_inputs(model)
    bn = model.loss.discriminator.main[3]
    before = bn.num_batches_tracked.clone()
    d_loss, _ = model.loss(qloss, x, xrec, 1, global_step=0)
    d_loss.backward()
    assert bn.num_batches_tracked == before + 2
    assert model.encoder.conv_in.weight.grad is None  # D step does not reach the generator


def test_perceptual_loss_adds_to_reconstruction():
    model = tiny_model(perceptual_weight=1.0, lpaps_layers=TINY_LPAPS, lpaps_trunk="random")
    assert hasattr(model.loss, "perceptual_loss")
    x, xrec, qloss = _loss_inputs(model)
    model.loss.eval()
    _, log = model.loss(qloss, x, xrec, 0, global_step=0, last_layer=model.get_last_layer())
    p = model.loss.perceptual_loss(x, xrec).mean()
    assert torch.isclose(log["train/nll_loss"], (x - xrec).abs().mean() + p, rtol=1e-5)
    assert not hasattr(tiny_model().loss, "perceptual_loss")


def test_autoencoder_parameters_exclude_the_loss():
    model = tiny_model()
    ae = {id(p) for p in model.autoencoder_parameters()}
    assert not ae & {id(p) for p in model.loss.parameters()}
    assert len(ae) == len(list(model.parameters())) - len(list(model.loss.parameters()))


@pytest.mark.parametrize("bad", ["squared"])
def test_unknown_disc_loss_is_refused(bad):
    with pytest.raises(ValueError, match="hinge"):
        VQLPAPSWithDiscriminator(disc_start=0, disc_loss=bad, perceptual_weight=0)


def test_data_init_puts_a_code_on_every_cluster_of_the_inputs():
    """k-means from the encoder's outputs (codebook.init=data): each of four separate clusters gets codes of its own,
    which sit among its inputs."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0], [-4.0, -4.0, 0]])
    z = (centres[:, None] + 0.1 * torch.randn(4, 50, 3, generator=g)).reshape(-1, 3)
    vq = VectorQuantizer(8, 3)
    vq.init_from_data(z, torch.Generator().manual_seed(1))
    codes = [set(c.tolist()) for c in vq.nearest(z).view(4, 50)]
    assert all(a.isdisjoint(b) for i, a in enumerate(codes) for b in codes[i + 1:])  # no code shared by two clusters
    assert (torch.cdist(vq.embedding.weight, centres).min(1).values < 0.5).all()  # every code inside a cluster


def test_restart_moves_unused_codes_onto_the_worst_represented_inputs():
    vq = VectorQuantizer(4, 2)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [0.1, 0.0], [50.0, 50.0], [60.0, 60.0]]))
    z = torch.cat([torch.zeros(99, 2), torch.tensor([[10.0, -10.0]])])  # one input far from every code
    vq.restart(torch.tensor([2, 3]), z, torch.Generator().manual_seed(0))
    assert torch.equal(vq.embedding.weight[2], torch.tensor([10.0, -10.0]))  # drawn in proportion to the distance
    assert vq.nearest(z[-1:]).item() in (2, 3)
