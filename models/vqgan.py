"""The spectrogram VQGAN of SpecVQGAN (stage 1): Encoder, Decoder, VectorQuantizer and VQModel (spec §3.2-3.4).

Parameter names and shapes equal the original's (`encoder.down.N.block.M.conv1.weight`, `quantize.embedding.weight`,
...), so released checkpoints load strictly. An 80 x 848 spectrogram (B, 1, 80, 848) in [-1, 1] becomes a 5 x 53
grid of codes through 4 stride-2 downsamplings.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def normalize(channels: int, groups: int = 32) -> nn.GroupNorm:
    """The original's Normalize: GroupNorm(32, eps 1e-6, affine). `groups` < 32 only for tiny test models."""
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GN -> swish -> conv3x3 -> GN -> swish -> dropout -> conv3x3, plus a 1x1 `nin_shortcut` when in != out."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, groups: int = 32):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = normalize(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = normalize(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions (1x1 q, k, v, proj_out), residual."""

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.norm = normalize(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        q = q.reshape(b, c, hh * ww).permute(0, 2, 1)  # (B, HW, C)
        k = k.reshape(b, c, hh * ww)  # (B, C, HW)
        w = torch.bmm(q, k) * (int(c) ** -0.5)  # (B, HW_q, HW_k)
        w = torch.softmax(w, dim=2)
        v = v.reshape(b, c, hh * ww)  # (B, C, HW_k)
        h = torch.bmm(v, w.permute(0, 2, 1))  # (B, C, HW_q)
        h = h.reshape(b, c, hh, ww)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Zero-pad right and bottom by 1, then conv3x3 stride 2 without padding: n -> floor(n / 2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then conv3x3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: `block` (ResnetBlocks), `attn` (AttnBlocks, possibly none), optional resampler."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, dropout, groups)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """(B, in_channels, F, T) -> (B, z_channels (x2 if double_z), F / 2^(L-1), T / 2^(L-1)), L = len(ch_mult).

    Attention goes into the levels whose running size along the time axis (starting at `resolution`) is in
    `attn_resolutions`; the paper's 848 with [53] puts 2 AttnBlocks at the last level.
    """

    def __init__(self, *, ch: int, ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int,
                 attn_resolutions: Sequence[int], dropout: float = 0.0, in_channels: int, resolution: int,
                 z_channels: int, double_z: bool = False, norm_groups: int = 32, **ignore):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        g = norm_groups
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        in_ch_mult = (1,) + tuple(ch_mult)
        curr_res = resolution
        self.down = nn.ModuleList()
        block_in = ch
        for i_level in range(self.num_resolutions):
            level = _Level()
            block_in, block_out = ch * in_ch_mult[i_level], ch * ch_mult[i_level]
            for _ in range(num_res_blocks):
                level.block.append(ResnetBlock(block_in, block_out, dropout, g))
                block_in = block_out
                if curr_res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in, g))
            if i_level != self.num_resolutions - 1:
                level.downsample = Downsample(block_in)
                curr_res = curr_res // 2
            self.down.append(level)
        self.mid = _Mid(block_in, dropout, g)
        self.norm_out = normalize(block_in, g)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, ch, F, T)
        for i_level, level in enumerate(self.down):
            for i_block, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = level.downsample(h)  # (B, C, F/2, T/2)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))  # (B, z_channels, F', T')


class Decoder(nn.Module):
    """(B, z_channels, F', T') -> (B, out_ch, F' * 2^(L-1), T' * 2^(L-1)); no output activation (unbounded)."""

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int,
                 attn_resolutions: Sequence[int], dropout: float = 0.0, resolution: int, z_channels: int,
                 norm_groups: int = 32, **ignore):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        g = norm_groups
        block_in = ch * ch_mult[-1]
        curr_res = resolution // 2 ** (self.num_resolutions - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = _Mid(block_in, dropout, g)
        levels: list[_Level] = []
        for i_level in reversed(range(self.num_resolutions)):
            level = _Level()
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, block_out, dropout, g))
                block_in = block_out
                if curr_res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in, g))
            if i_level != 0:
                level.upsample = Upsample(block_in)
                curr_res = curr_res * 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # indexed by level: up.0 is the highest resolution
        self.norm_out = normalize(block_in, g)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))  # (B, ch * ch_mult[-1], F', T')
        for i_level in reversed(range(self.num_resolutions)):
            level = self.up[i_level]
            for i_block, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[i_block](h)
            if i_level != 0:
                h = level.upsample(h)  # (B, C, 2F, 2T)
        return self.conv_out(swish(self.norm_out(h)))  # (B, out_ch, F, T)


class VectorQuantizer(nn.Module):
    """Nearest-code quantiser with the straight-through estimator (taming's, spec §3.4).

    loss = mean((sg[z_q] - z)^2) + beta * mean((z_q - sg[z])^2): beta weighs the codebook term, as the original.
    Returns (z_q, loss, (perplexity, one-hot encodings (N, n_e), indices (N, 1))), N = B * H * W in raster order
    (index of cell (f, t) is f * W + t within each item).
    """

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25):
        super().__init__()
        self.n_e, self.e_dim, self.beta = n_e, e_dim, beta
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)

    @torch.no_grad()
    def init_from_data(self, z_flat: torch.Tensor, generator: torch.Generator, iterations: int = 10) -> None:
        """Codes from encoder outputs (N, e_dim), by k-means (k-means++ seeds, Lloyd's iterations): every code starts
        where some input lands, where the original's uniform(-1/n, 1/n) start leaves most codes out of reach of an
        encoder whose outputs are larger (not in the original; a small codebook's `init: data`)."""
        z = z_flat.detach().float()
        first = int(torch.randint(len(z), (), generator=generator, device=z.device))
        centres = [z[first]]
        dist = ((z - centres[0]) ** 2).sum(1)
        for _ in range(1, self.n_e):
            weights = dist if dist.sum() > 0 else torch.ones_like(dist)
            pick = int(torch.multinomial(weights.cpu(), 1, generator=generator))
            centres.append(z[pick])
            dist = torch.minimum(dist, ((z - z[pick]) ** 2).sum(1))
        codes = torch.stack(centres)
        for _ in range(iterations):
            nearest = torch.cdist(z, codes).argmin(1)
            for k in range(self.n_e):
                members = z[nearest == k]
                if len(members):
                    codes[k] = members.mean(0)
        self.embedding.weight.copy_(codes.to(self.embedding.weight.dtype))

    @torch.no_grad()
    def restart(self, codes: torch.Tensor, z_flat: torch.Tensor, generator: torch.Generator) -> None:
        """Move `codes` (indices) onto inputs among z_flat (N, e_dim), drawn in proportion to their squared distance
        from the nearest code: unused codes go where the input is represented worst (not in the original)."""
        z = z_flat.detach().float()
        dist = ((z - self.embedding.weight[self.nearest(z)].float()) ** 2).sum(1)
        weights = dist if dist.sum() > 0 else torch.ones_like(dist)
        picks = torch.multinomial(weights.cpu(), len(codes), replacement=len(codes) > len(z), generator=generator)
        self.embedding.weight[codes.to(self.embedding.weight.device)] = z[picks.to(z.device)].to(
            self.embedding.weight.dtype)

    def nearest(self, z_flat: torch.Tensor) -> torch.Tensor:
        """(N, e_dim) -> (N,) index of the closest code by ||z||^2 + ||e||^2 - 2 z.e."""
        e = self.embedding.weight
        d = (z_flat ** 2).sum(dim=1, keepdim=True) + (e ** 2).sum(dim=1) - 2 * z_flat @ e.t()  # (N, n_e)
        return torch.argmin(d, dim=1)

    def forward(self, z: torch.Tensor):
        z = z.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C)
        z_flat = z.view(-1, self.e_dim)  # (B*H*W, C), raster order over (H, W)
        indices = self.nearest(z_flat).unsqueeze(1)  # (N, 1)
        encodings = torch.zeros(indices.shape[0], self.n_e, dtype=z.dtype, device=z.device)
        encodings.scatter_(1, indices, 1)  # (N, n_e) one-hot
        # a row lookup equals the original's one-hot @ codebook exactly (sums of zeros) and is cheaper
        z_q = F.embedding(indices.squeeze(1), self.embedding.weight).view(z.shape)  # (B, H, W, C)
        loss = torch.mean((z_q.detach() - z) ** 2) + self.beta * torch.mean((z_q - z.detach()) ** 2)
        z_q = z + (z_q - z).detach()  # straight-through: gradients of z_q flow to z
        e_mean = encodings.mean(dim=0)
        perplexity = torch.exp(-torch.sum(e_mean * torch.log(e_mean + 1e-10)))
        z_q = z_q.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)
        return z_q, loss, (perplexity, encodings, indices)

    def get_codebook_entry(self, indices: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
        """Codes of `indices`; with `shape` = (B, H, W, C) they come back as (B, C, H, W)."""
        z_q = F.embedding(indices.reshape(-1).long(), self.embedding.weight)  # (N, C)
        if shape is not None:
            z_q = z_q.view(*shape).permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)
        return z_q


class VQModel(nn.Module):
    """Encoder -> quant_conv -> VectorQuantizer -> post_quant_conv -> Decoder.

    Args:
        ddconfig: the Encoder/Decoder kwargs (ch, out_ch, ch_mult, num_res_blocks, attn_resolutions, dropout,
            in_channels, resolution, z_channels, double_z, and optionally norm_groups).
        n_embed, embed_dim: codebook size and code width.
        beta: weight of the codebook term of the VQ loss (hard-coded 0.25 in the original).
        loss: an optional loss module kept as the submodule `loss`, so that `state_dict()` has the original's
            `loss.*` layout (the discriminator and perceptual loss). Excluded from `autoencoder_parameters()`.
    """

    def __init__(self, ddconfig: dict, n_embed: int, embed_dim: int, beta: float = 0.25,
                 loss: nn.Module | None = None):
        super().__init__()
        ddconfig = dict(ddconfig)
        self.ddconfig, self.n_embed, self.embed_dim, self.beta = ddconfig, int(n_embed), int(embed_dim), beta
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = VectorQuantizer(self.n_embed, self.embed_dim, beta=beta)
        z = ddconfig["z_channels"]
        self.quant_conv = nn.Conv2d(2 * z if ddconfig.get("double_z") else z, self.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(self.embed_dim, z, 1)
        self.loss = loss
        # code-usage tally for logging; not persistent, so original checkpoints load strictly
        self.register_buffer("code_counts", torch.zeros(self.n_embed, dtype=torch.long), persistent=False)

    @property
    def model_args(self) -> dict:
        """The constructor kwargs (without `loss`), for checkpoints."""
        return {"ddconfig": dict(self.ddconfig), "n_embed": self.n_embed, "embed_dim": self.embed_dim,
                "beta": self.beta}

    @property
    def downsample_factor(self) -> int:
        """How many input pixels one code spans along each axis (16 for 5 levels)."""
        return 2 ** (len(self.ddconfig["ch_mult"]) - 1)

    def grid(self, n_mels: int, n_frames: int) -> tuple[int, int]:
        """The code grid (F', T') of an n_mels x n_frames input: (5, 53) for 80 x 848."""
        return n_mels // self.downsample_factor, n_frames // self.downsample_factor

    @staticmethod
    def get_input(batch: dict | torch.Tensor, key: str = "image") -> torch.Tensor:
        """A batch's spectrogram (B, F, T) or (B, 1, F, T) as float32 (B, 1, F, T)."""
        x = batch[key] if isinstance(batch, dict) else batch
        if x.dim() == 3:
            x = x.unsqueeze(1)  # (B, 1, F, T)
        return x.float().contiguous()

    def encode(self, x: torch.Tensor):
        """(B, 1, F, T) -> (quant (B, embed_dim, F', T'), vq loss, (perplexity, one-hot, indices (N, 1)))."""
        h = self.quant_conv(self.encoder(x))  # (B, embed_dim, F', T')
        quant, emb_loss, info = self.quantize(h)
        if not h.is_meta:
            with torch.no_grad():
                self.code_counts += torch.bincount(info[2].view(-1), minlength=self.n_embed)
        return quant, emb_loss, info

    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, F, T) -> code indices (B, F', T')."""
        quant, _, info = self.encode(x)
        b, _, fh, tw = quant.shape
        return info[2].view(b, fh, tw)  # raster order: index f * T' + t

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))  # (B, out_ch, F, T)

    def decode_code(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, F', T') -> reconstruction (B, out_ch, 16 F', 16 T')."""
        b, fh, tw = indices.shape
        quant = self.quantize.get_codebook_entry(indices, shape=(b, fh, tw, self.embed_dim))  # (B, C, F', T')
        return self.decode(quant)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        quant, qloss, _ = self.encode(x)
        return self.decode(quant), qloss

    def get_last_layer(self) -> torch.Tensor:
        """The weight the adaptive GAN weight is computed on (decoder.conv_out.weight)."""
        return self.decoder.conv_out.weight

    def autoencoder_parameters(self) -> Iterator[nn.Parameter]:
        """What the original's AE optimiser updates: encoder, decoder, quantize, quant_conv, post_quant_conv."""
        for module in (self.encoder, self.decoder, self.quantize, self.quant_conv, self.post_quant_conv):
            yield from module.parameters()

    def code_usage(self) -> dict[str, float]:
        """From the tally since the last reset: perplexity of the code distribution, share of unused codes."""
        counts = self.code_counts.double()
        total = counts.sum()
        if total == 0:
            return {"perplexity": float("nan"), "dead_share": float("nan"), "count": 0}
        p = counts / total
        perplexity = math.exp(-float((p * torch.log(p + 1e-10)).sum()))
        return {"perplexity": perplexity, "dead_share": float((counts == 0).double().mean()), "count": int(total)}

    def reset_code_usage(self) -> None:
        self.code_counts.zero_()
