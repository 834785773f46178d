"""MelGAN vocoder (spec §5): generator, multi-scale discriminator and their losses.

Module indices equal the original's (`model.1`, `model.4.block.2`, `model.disc_0.model.layer_1.0`, ...), so its
state dicts load after one renaming: the original used the legacy `torch.nn.utils.weight_norm` (keys `weight_g`,
`weight_v`); we use the parametrised weight norm (keys `parametrizations.weight.original0` / `original1`, same
tensors, same shapes). `from_legacy_weight_norm` / `to_legacy_weight_norm` convert between the two layouts.

The original's conv init (`weight.normal_(0, 0.02)` on weight-normed convs) touches only the derived weight, which
is recomputed at every forward, so it is a no-op (spec §11.14); we keep torch's default init and skip it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

RATIOS: tuple[int, ...] = (8, 8, 2, 2)  # upsampling per stage; product = hop 256

_LEGACY = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}


def WNConv1d(*args, **kwargs) -> nn.Module:
    return weight_norm(nn.Conv1d(*args, **kwargs))


def WNConvTranspose1d(*args, **kwargs) -> nn.Module:
    return weight_norm(nn.ConvTranspose1d(*args, **kwargs))


def from_legacy_weight_norm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename `*.weight_g` / `*.weight_v` (old-style weight norm) to the parametrised names; others unchanged."""
    out = {}
    for key, value in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        out[f"{prefix}.{_LEGACY[leaf]}" if leaf in _LEGACY and prefix else key] = value
    return out


def to_legacy_weight_norm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `from_legacy_weight_norm`: our keys -> the original's `weight_g` / `weight_v`."""
    inverse = {v: k for k, v in _LEGACY.items()}
    out = {}
    for key, value in state_dict.items():
        for new, old in inverse.items():
            if key.endswith("." + new):
                key = key[: -len(new)] + old
                break
        out[key] = value
    return out


class ResnetBlock(nn.Module):
    """x + f(x) with a weight-normed 1x1 shortcut: block = [LReLU, pad d, conv k3 dil d, LReLU, conv k1]."""

    def __init__(self, dim: int, dilation: int = 1):
        super().__init__()
        self.block = nn.Sequential(
            nn.LeakyReLU(0.2),
            nn.ReflectionPad1d(dilation),
            WNConv1d(dim, dim, kernel_size=3, dilation=dilation),
            nn.LeakyReLU(0.2),
            WNConv1d(dim, dim, kernel_size=1),
        )
        self.shortcut = WNConv1d(dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)


class Generator(nn.Module):
    """Mel (B, input_size, T) in [0, 1] -> waveform (B, 1, hop * T) in [-1, 1]; hop = prod(ratios) = 256.

    Args:
        input_size: mel bins (80).
        ngf: base width; the first conv has 2**len(ratios) * ngf channels (paper 32 -> 512), halved per stage.
        n_residual_layers: ResnetBlocks after each upsampling, with dilations 1, 3, 9, ... (paper 3).
        ratios: upsampling factors (paper [8, 8, 2, 2]).
    """

    def __init__(self, input_size: int = 80, ngf: int = 32, n_residual_layers: int = 3,
                 ratios: Sequence[int] = RATIOS):
        super().__init__()
        self.ratios = tuple(int(r) for r in ratios)
        self.hop_length = math.prod(self.ratios)
        mult = 2 ** len(self.ratios)
        model: list[nn.Module] = [nn.ReflectionPad1d(3), WNConv1d(input_size, mult * ngf, kernel_size=7)]
        for r in self.ratios:
            model += [
                nn.LeakyReLU(0.2),
                WNConvTranspose1d(mult * ngf, mult * ngf // 2, kernel_size=2 * r, stride=r,
                                  padding=r // 2 + r % 2, output_padding=r % 2),  # length x r exactly
            ]
            model += [ResnetBlock(mult * ngf // 2, dilation=3 ** j) for j in range(n_residual_layers)]
            mult //= 2
        model += [nn.LeakyReLU(0.2), nn.ReflectionPad1d(3), WNConv1d(ngf, 1, kernel_size=7), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.model(mel)  # (B, 1, hop * T)

    def remove_weight_norm(self) -> Generator:
        """Folds every weight norm into a plain `weight` in place (inference only: the keys become `*.weight`)."""
        for module in self.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        return self

    def for_inference(self) -> InferenceGenerator:
        """A frozen copy for synthesis: same output as `forward` to ~1e-6, about 2x faster on CPU."""
        return InferenceGenerator(self)


def _folded(conv: nn.Module) -> torch.Tensor:
    """The conv's effective weight (weight norm applied once), detached."""
    return conv.weight.detach().clone()


def _rows(x: torch.Tensor, lo: int, hi: int, slope: float | None) -> torch.Tensor:
    """Rows lo .. hi - 1 of x (L, C) reflected at both ends (ReflectionPad1d in time), LeakyReLU'd if slope."""
    L = x.shape[0]
    if lo >= 0 and hi <= L:
        rows = x[lo:hi]
    else:
        idx = torch.arange(lo, hi, device=x.device).abs()  # -i -> i
        idx = torch.where(idx >= L, 2 * (L - 1) - idx, idx)  # L - 1 + j -> L - 1 - j
        rows = x.index_select(0, idx)
    return F.leaky_relu(rows, slope) if slope is not None else rows


class InferenceGenerator(nn.Module):
    """The Generator's forward for synthesis, computed time-major with plain matrix products.

    Built from a Generator: weight norm folded once, weights frozen as buffers (later changes to the Generator
    are not seen). Each clip is a (time, channels) matrix, processed in row chunks of about `chunk_elems`
    values so that a layer's intermediate results stay in the CPU caches:
    - a k-tap dilated conv is k matrix products on row-shifted views of the padded input (no im2col copy);
    - a ResnetBlock is computed chunk by chunk, its 1x1 conv and shortcut accumulating into one output;
    - a transposed conv of kernel 2r, stride r is two products whose outputs overlap by one block of r
      samples (polyphase form; torch's ConvTranspose1d is the slowest layer on CPU).
    Sums are taken in another order than oneDNN's, so outputs equal `Generator.forward` to ~1e-6. A batch is
    processed one clip at a time; with several `workers`, clips (or, for fewer clips than workers, pieces of a
    clip that overlap by `halo` mel frames, default the receptive radius + 1) run side by side in threads.
    """

    def __init__(self, generator: Generator, chunk_elems: int = 1 << 17, halo: int | None = None):
        super().__init__()
        self.hop_length = generator.hop_length
        self.chunk_elems = chunk_elems
        self.ops: list[tuple[str, tuple, tuple[int, ...]]] = []  # (kind, settings, indices of buffers t0, t1, ..)
        tensors: list[torch.Tensor] = []

        def keep(t: torch.Tensor) -> int:
            tensors.append(t.detach().contiguous())
            return len(tensors) - 1

        layers = list(generator.model)
        i = 0
        slope = None  # a LeakyReLU to fold into the next layer's input
        while i < len(layers):
            layer = layers[i]
            if isinstance(layer, nn.LeakyReLU):
                slope = layer.negative_slope
            elif isinstance(layer, nn.ReflectionPad1d):  # pad + conv: the first and the last conv
                conv = layers[i + 1]
                taps = _folded(conv).permute(2, 1, 0)  # (Cout, Cin, K) -> (K, Cin, Cout)
                self.ops.append(("conv", (slope, layer.padding[0], conv.dilation[0]), (keep(taps), keep(conv.bias))))
                slope = None
                i += 1
            elif isinstance(layer, nn.ConvTranspose1d):
                w, r = _folded(layer), layer.stride[0]  # (Cin, Cout, 2r)
                if layer.kernel_size[0] != 2 * r or not layer.padding[0] <= r:
                    raise ValueError(f"InferenceGenerator needs kernel = 2 * stride and padding <= stride: {layer}")
                cin, cout = w.shape[:2]
                taps = w.permute(0, 2, 1).reshape(cin, 2, r * cout)  # (Cin, 2, r Cout): [k // r, (k % r) Cout + o]
                self.ops.append(("up", (slope, r, layer.padding[0]),
                                 (keep(taps[:, 0]), keep(taps[:, 1]), keep(layer.bias.repeat(r)))))
                slope = None
            elif isinstance(layer, ResnetBlock) and slope is None:
                act_in, pad, conv3, act, conv1 = layer.block
                slopes_pads = (act_in.negative_slope, pad.padding[0], conv3.dilation[0], act.negative_slope)
                self.ops.append(("block", slopes_pads,
                                 (keep(_folded(conv3).permute(2, 1, 0)), keep(conv3.bias),
                                  keep(_folded(conv1)[:, :, 0].t()), keep(_folded(layer.shortcut)[:, :, 0].t()),
                                  keep(conv1.bias + layer.shortcut.bias))))
            elif isinstance(layer, nn.Tanh) and slope is None:
                self.ops.append(("tanh", (), ()))
            else:
                raise ValueError(f"InferenceGenerator does not handle layer {i} ({layer}) here")
            i += 1
        for j, t in enumerate(tensors):
            self.register_buffer(f"t{j}", t, persistent=False)
        self.halo = halo if halo is not None else self.receptive_radius() + 1

    def receptive_radius(self) -> int:
        """Mel frames either side of a frame that reach its output samples (7 for the paper's generator)."""
        radius = 0  # in samples at the current layer's rate, walking from the output back to the mel
        for kind, settings, indices in reversed(self.ops):
            if kind == "conv":
                radius += (self._t(indices[0]).shape[0] - 1) // 2 * settings[2]
            elif kind == "block":
                radius += settings[2]  # a 3-tap conv of dilation d
            elif kind == "up":
                radius = -(-radius // settings[1]) + 1  # kernel 2r: each output sees 2 inputs
        return radius

    def _t(self, j: int) -> torch.Tensor:
        return getattr(self, f"t{j}")

    def _chunk(self, channels: int) -> int:
        return max(256, self.chunk_elems // channels)

    def _conv(self, x: torch.Tensor, slope, pad: int, dil: int, taps: torch.Tensor, bias: torch.Tensor):
        """ReflectionPad1d(pad) + a K-tap conv on LeakyReLU(x) -> (L, Cout)."""
        L, K = x.shape[0], taps.shape[0]
        out = x.new_empty(L, taps.shape[2])
        step = self._chunk(max(x.shape[1], taps.shape[2]))
        for a in range(0, L, step):
            b = min(L, a + step)
            xp = _rows(x, a - pad, b - pad + (K - 1) * dil, slope)  # (b - a + (K - 1) dil, Cin)
            if taps.shape[2] == 1:  # Cout 1 (the last conv): one product, then sum the K diagonals
                z = xp @ taps[:, :, 0].t()  # (rows, K): z[t, k] = xp[t] . w_k
                out[a:b] = z.as_strided((b - a, K), (K, K * dil + 1)).sum(1, keepdim=True) + bias
            else:
                o = torch.addmm(bias, xp[: b - a], taps[0], out=out[a:b])
                for k in range(1, K):
                    o.addmm_(xp[k * dil : k * dil + b - a], taps[k])
        return out

    def _block(self, x: torch.Tensor, slope_in, pad: int, dil: int, slope_mid, taps, bias3, w1, ws, bias1):
        """ResnetBlock: shortcut(x) + conv1(LReLU(conv3(pad(LReLU(x))))) -> (L, C), chunk by chunk."""
        L = x.shape[0]
        out = torch.empty_like(x)
        step = self._chunk(x.shape[1])
        for a in range(0, L, step):
            b = min(L, a + step)
            xp = _rows(x, a - pad, b + pad, slope_in)  # (b - a + 2 pad, C)
            h = torch.addmm(bias3, xp[: b - a], taps[0])
            h.addmm_(xp[dil : dil + b - a], taps[1]).addmm_(xp[2 * dil : 2 * dil + b - a], taps[2])
            h = F.leaky_relu(h, slope_mid)
            torch.addmm(bias1, h, w1, out=out[a:b]).addmm_(x[a:b], ws)
        return out

    def _up(self, x: torch.Tensor, slope, r: int, pad: int, w0, w1, bias):
        """ConvTranspose1d(kernel 2r, stride r) of LeakyReLU(x) (L, Cin) -> (L r, Cout)."""
        L = x.shape[0]
        x = F.leaky_relu(x, slope) if slope is not None else x
        y = x.new_empty(L + 1, w0.shape[1])  # (L + 1, r Cout): row j holds outputs j r .. j r + r - 1
        step = self._chunk(w0.shape[1])
        for a in range(0, L + 1, step):  # block j = x[j] @ w0 + x[j - 1] @ w1 (+ bias)
            b = min(L + 1, a + step)
            o = y[a:b]
            if b <= L:
                torch.addmm(bias, x[a:b], w0, out=o)
            else:
                o[: L - a] = torch.addmm(bias, x[a:L], w0)
                o[L - a :] = bias
            if a == 0:
                o[1:].addmm_(x[: b - 1], w1)
            else:
                o.addmm_(x[a - 1 : b - 1], w1)
        return y.view((L + 1) * r, -1)[pad : pad + L * r]  # (L r, Cout), cropped as ConvTranspose1d

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        """One clip: mel (input_size, T) -> wave (hop T,)."""
        x = x.t()  # (T, C): time-major from here on
        for kind, settings, indices in self.ops:
            tensors = [self._t(j) for j in indices]
            if kind == "tanh":
                x = torch.tanh(x)
            else:
                x = getattr(self, f"_{kind}")(x, *settings, *tensors)
        return x.reshape(-1)

    def pieces(self, batch: int, frames: int, workers: int) -> list[tuple[int, int, int, int, int]]:
        """Work items (clip, first frame, end frame, kept from, kept to): whole clips when there are at least
        `workers` of them, else each clip cut in time into pieces that overlap by `halo` frames each side."""
        n = 1 if batch >= workers else min(-(-workers // batch), frames // (4 * self.halo) or 1)
        bounds = [round(i * frames / n) for i in range(n + 1)]
        return [(b, max(0, c0 - self.halo), min(frames, c1 + self.halo), c0, c1)
                for b in range(batch) for c0, c1 in pairwise(bounds)]

    @torch.no_grad()  # the output is a normal tensor; the work inside runs in inference mode
    def forward(self, mel: torch.Tensor, workers: int | None = None) -> torch.Tensor:
        """mel (B, input_size, T) -> waveform (B, 1, hop T), as Generator.forward.

        `workers` (default: torch.get_num_threads()) pieces run at once in threads, each single-threaded
        (torch's thread count is set to 1 meanwhile and restored): a 2-core CPU then runs two clips, or two
        halves of one clip, side by side instead of splitting every small product between cores.
        """
        if mel.dim() != 3:
            raise ValueError(f"InferenceGenerator wants a mel (B, bins, T), got {tuple(mel.shape)}")
        B, _, T = mel.shape
        workers = workers or torch.get_num_threads()
        out = mel.new_empty(B, 1, T * self.hop_length)
        hop = self.hop_length

        def run(item: tuple[int, int, int, int, int]) -> None:
            b, f0, f1, c0, c1 = item
            with torch.inference_mode():  # thread-local: entered again in the worker threads
                wave = self._one(mel[b, :, f0:f1])  # (hop (f1 - f0),)
                out[b, 0, c0 * hop : c1 * hop] = wave[(c0 - f0) * hop : (c1 - f0) * hop]

        items = self.pieces(B, T, workers)
        if workers <= 1 or len(items) == 1 or mel.device.type != "cpu":
            for item in items:
                run(item)
            return out
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(run, items))
        finally:
            torch.set_num_threads(threads)
        return out


class NLayerDiscriminator(nn.Module):
    """One scale: returns the list of all n_layers + 3 layer outputs (the last is the (B, 1, L') score map).

    Channels grow by `downsampling_factor` per strided layer up to 1024. The original builds the layer after the
    strided ones with the input width of the last strided layer instead of its output width; both agree for the
    paper's sizes (1024 = 1024), and we use the true width so smaller presets also work.
    """

    def __init__(self, ndf: int = 16, n_layers: int = 4, downsampling_factor: int = 4):
        super().__init__()
        model = nn.ModuleDict()
        model["layer_0"] = nn.Sequential(nn.ReflectionPad1d(7), WNConv1d(1, ndf, kernel_size=15),
                                         nn.LeakyReLU(0.2, True))
        nf, stride = ndf, downsampling_factor
        for n in range(1, n_layers + 1):
            nf_prev, nf = nf, min(nf * stride, 1024)
            model[f"layer_{n}"] = nn.Sequential(
                WNConv1d(nf_prev, nf, kernel_size=stride * 10 + 1, stride=stride, padding=stride * 5,
                         groups=nf_prev // 4),  # grouped: 4 input channels per group
                nn.LeakyReLU(0.2, True),
            )
        nf_out = min(nf * 2, 1024)
        model[f"layer_{n_layers + 1}"] = nn.Sequential(WNConv1d(nf, nf_out, kernel_size=5, padding=2),
                                                       nn.LeakyReLU(0.2, True))
        model[f"layer_{n_layers + 2}"] = WNConv1d(nf_out, 1, kernel_size=3, padding=1)
        self.model = model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        results = []
        for layer in self.model.values():
            x = layer(x)
            results.append(x)
        return results


class Discriminator(nn.Module):
    """`num_D` NLayerDiscriminators on the waveform (B, 1, L) average-pooled by 2 between scales.

    Returns one list of layer outputs per scale (`model.disc_0` sees the full rate).
    """

    def __init__(self, num_D: int = 3, ndf: int = 16, n_layers: int = 4, downsampling_factor: int = 4):
        super().__init__()
        self.model = nn.ModuleDict({f"disc_{i}": NLayerDiscriminator(ndf, n_layers, downsampling_factor)
                                    for i in range(num_D)})
        self.downsample = nn.AvgPool1d(4, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        results = []
        for disc in self.model.values():
            results.append(disc(x))
            x = self.downsample(x)  # (B, 1, L / 2)
        return results


# ----------------------------------------------------------------------------------------------- losses
def discriminator_hinge_loss(d_fake: list[list[torch.Tensor]], d_real: list[list[torch.Tensor]]) -> torch.Tensor:
    """D step: sum over scales of mean ReLU(1 + D(G(s))) + mean ReLU(1 - D(x)) on the last layer's scores.

    Pass `d_fake` computed from a detached generator output.
    """
    loss = d_fake[0][-1].new_zeros(())
    for fake, real in zip(d_fake, d_real):
        loss = loss + F.relu(1 + fake[-1]).mean() + F.relu(1 - real[-1]).mean()
    return loss


def generator_adversarial_loss(d_fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """G step, adversarial part: sum over scales of -mean D(G(s))."""
    loss = d_fake[0][-1].new_zeros(())
    for fake in d_fake:
        loss = loss - fake[-1].mean()
    return loss


def feature_matching_loss(d_fake: list[list[torch.Tensor]], d_real: list[list[torch.Tensor]],
                          n_layers_D: int | None = None) -> torch.Tensor:
    """Sum over scales and all layers but the last of w * L1(fake feature, real feature detached).

    w = 4 / (n_layers_D + 1) / num_D (0.8 / 3 for the paper); n_layers_D defaults to len(layers) - 3.
    Multiply by lambda_feat (10) yourself, or use `generator_loss`.
    """
    num_D = len(d_fake)
    if n_layers_D is None:
        n_layers_D = len(d_fake[0]) - 3
    w = 4.0 / (n_layers_D + 1) / num_D
    loss = d_fake[0][-1].new_zeros(())
    for fake, real in zip(d_fake, d_real):
        for f, r in zip(fake[:-1], real[:-1]):
            loss = loss + w * F.l1_loss(f, r.detach())
    return loss


def generator_loss(d_fake: list[list[torch.Tensor]], d_real: list[list[torch.Tensor]],
                   lambda_feat: float = 10.0, n_layers_D: int | None = None) -> dict[str, torch.Tensor]:
    """The G objective: {'loss': adversarial + lambda_feat * feature matching, 'adversarial', 'feature_matching'}."""
    adv = generator_adversarial_loss(d_fake)
    fm = feature_matching_loss(d_fake, d_real, n_layers_D)
    return {"loss": adv + lambda_feat * fm, "adversarial": adv, "feature_matching": fm}
