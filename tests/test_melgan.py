"""MelGAN: the original's key layout and outputs, the losses, load_vocoder and the mel -> wave callable."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.melgan import (
    Discriminator,
    Generator,
    discriminator_hinge_loss,
    feature_matching_loss,
    from_legacy_weight_norm,
    generator_loss,
    to_legacy_weight_norm,
)
from pipeline.build.vocoder import load_vocoder, load_vocoder_or_griffinlim
from pipeline.checkpoints.format import save_checkpoint


@pytest.fixture(scope="module")
def small_io(original_fixtures):
    return torch.load(original_fixtures / "melgan_small_io.pt", weights_only=True)


def test_paper_generator_has_the_original_keys_and_size(original_fixtures):
    expected = json.loads((original_fixtures / "original_keys.json").read_text())["melgan_netG"]
    with torch.device("meta"):
        g = Generator(80, ngf=32, n_residual_layers=3)
    ours = {k: list(v.shape) for k, v in to_legacy_weight_norm(g.state_dict()).items()}
    assert ours == expected
    assert sum(p.numel() for p in g.parameters()) == 4_266_050


def test_paper_discriminator_size_and_scales():
    with torch.device("meta"):
        d = Discriminator(num_D=3, ndf=16, n_layers=4, downsampling_factor=4)
        out = d(torch.empty(2, 1, 8192))
    assert sum(p.numel() for p in d.parameters()) == 16_924_086
    assert [len(scale) for scale in out] == [7, 7, 7]
    assert [tuple(scale[-1].shape) for scale in out] == [(2, 1, 32), (2, 1, 16), (2, 1, 8)]
    assert "model.disc_2.model.layer_1.0.parametrizations.weight.original0" in d.state_dict()


def test_legacy_key_conversion_round_trips(original_fixtures):
    sd = torch.load(original_fixtures / "melgan_netG_small.pt", weights_only=True)
    assert to_legacy_weight_norm(from_legacy_weight_norm(sd)).keys() == sd.keys()


def test_load_original_netG_reproduces_its_output(original_fixtures, small_io):
    g = load_vocoder(original_fixtures / "melgan_netG_small.pt")
    assert not g.training and g.hop_length == 256
    assert g.model[1].parametrizations.weight.original1.shape == (128, 80, 7)  # ngf 8 inferred
    with torch.no_grad():
        wav = g(small_io["mel"])
    assert wav.shape == (1, 1, 8192)
    torch.testing.assert_close(wav, small_io["wav"], rtol=1e-4, atol=1e-5)


def test_our_checkpoint_round_trip_and_strictness(tmp_path, original_fixtures, small_io):
    g = load_vocoder(original_fixtures / "melgan_netG_small.pt")
    d = Discriminator(num_D=2, ndf=4, n_layers=2)
    state = {**{f"netG.{k}": v for k, v in g.state_dict().items()},
             **{f"netD.{k}": v for k, v in d.state_dict().items()}}
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"kind": "vocoder", "model_args": {"netG": {"input_size": 80, "ngf": 8,
                                                                       "n_residual_layers": 3}},
                           "state_dict": state})
    with torch.no_grad():
        torch.testing.assert_close(load_vocoder(path)(small_io["mel"]), small_io["wav"], rtol=1e-4, atol=1e-5)
    # a key too many or too few is an error that names it
    sd = dict(torch.load(original_fixtures / "melgan_netG_small.pt", weights_only=True))
    sd["model.99.weight_v"] = torch.zeros(1)
    torch.save(sd, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match="model.99"):
        load_vocoder(tmp_path / "extra.pt")
    del sd["model.99.weight_v"], sd["model.24.bias"]
    torch.save(sd, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="model.24.bias"):
        load_vocoder(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError):
        load_vocoder(tmp_path / "nope.pt")


def test_losses_match_their_definitions():
    torch.manual_seed(0)
    d = Discriminator(num_D=2, ndf=4, n_layers=2).eval()
    real, fake = torch.randn(2, 1, 1024), torch.randn(2, 1, 1024)
    d_real, d_fake = d(real), d(fake)
    expected_d = sum(torch.relu(1 + f[-1]).mean() + torch.relu(1 - r[-1]).mean() for f, r in zip(d_fake, d_real))
    torch.testing.assert_close(discriminator_hinge_loss(d_fake, d_real), expected_d)
    w = 4 / (2 + 1) / 2
    expected_fm = sum(w * (f - r).abs().mean() for fs, rs in zip(d_fake, d_real) for f, r in zip(fs[:-1], rs[:-1]))
    torch.testing.assert_close(feature_matching_loss(d_fake, d_real), expected_fm)
    out = generator_loss(d_fake, d_real, lambda_feat=10)
    torch.testing.assert_close(out["loss"], -sum(f[-1].mean() for f in d_fake) + 10 * expected_fm)


def test_vocoder_callable_melgan_and_griffinlim(original_fixtures, small_io):
    mel = small_io["mel"]  # (1, 80, 32)
    vocode = load_vocoder_or_griffinlim(str(original_fixtures / "melgan_netG_small.pt"))
    batch = vocode(mel.repeat(3, 1, 1))
    assert batch.shape == (3, 8192) and not batch.requires_grad
    torch.testing.assert_close(batch[2], small_io["wav"][0, 0], rtol=1e-4, atol=1e-5)
    single = vocode(mel[0].numpy())
    assert isinstance(single, np.ndarray) and single.dtype == np.float32 and single.shape == (8192,)
    gl = load_vocoder_or_griffinlim(None)
    assert gl.name == "griffinlim"
    wave = gl(mel[0].numpy())
    assert wave.shape == (8192,) and wave.dtype == np.float32 and np.isfinite(wave).all()
    assert gl(mel).shape == (1, 8192)
    with pytest.raises(ValueError, match="80"):
        vocode(torch.zeros(1, 64, 10))


def _random_generator(ngf: int = 4) -> Generator:
    """Small random generator with weight-norm gains and biases away from their init (so folding matters)."""
    torch.manual_seed(0)
    g = Generator(80, ngf=ngf, n_residual_layers=3).eval()
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("original0"):
                p.mul_(torch.rand_like(p) + 0.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    return g


def test_fast_inference_path_equals_the_generator():
    g = _random_generator()
    mel = torch.rand(2, 80, 40)
    with torch.no_grad():
        ref = g(mel)
    fast = g.for_inference()
    assert fast.halo == fast.receptive_radius() + 1 == 8
    torch.testing.assert_close(fast(mel, workers=1), ref, rtol=0, atol=1e-5)
    fast.chunk_elems = 64  # many row chunks per layer, edges included
    torch.testing.assert_close(fast(mel, workers=2), ref, rtol=0, atol=1e-5)
    # fewer clips than workers: each clip is cut in time into overlapping pieces run in threads
    long = torch.rand(1, 80, 120)
    assert len(fast.pieces(1, 120, 3)) == 3
    with torch.no_grad():
        torch.testing.assert_close(fast(long, workers=3), g(long), rtol=0, atol=1e-5)
    # folding weight norm in place gives the same plain-conv generator
    folded = _random_generator().remove_weight_norm()
    assert "model.1.weight" in folded.state_dict()
    with torch.no_grad():
        torch.testing.assert_close(folded(mel), ref, rtol=0, atol=1e-6)


def test_vocoder_fast_path_reproduces_the_originals_output(original_fixtures, small_io):
    vocode = load_vocoder_or_griffinlim(str(original_fixtures / "melgan_netG_small.pt"))
    assert vocode.fast is not None
    torch.testing.assert_close(vocode(small_io["mel"])[0], small_io["wav"][0, 0], rtol=1e-4, atol=1e-5)
    vocode.fast = None  # the plain path
    torch.testing.assert_close(vocode(small_io["mel"])[0], small_io["wav"][0, 0], rtol=1e-4, atol=1e-5)
