"""The paper's models at random weights, sized from the presets the stages compose (benchmarks only: speed does not
depend on the weights), and the bytes a cached decoding step reads."""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import OmegaConf

from models.cond_transformer import Net2NetTransformer
from models.gpt import GPTFeats
from models.melgan import Generator
from models.permuter import ColumnMajor
from pipeline.build.codebook import build_codebook
from pipeline.build.transformer import codebook_grid
from pipeline.config.presets import compose_stage, preset
from pipeline.media.mel import FRAMES_PER_COLUMN

# the paper run: the VAS presets (`paper_sizes` reads the GPT, its condition frames, top-k, batch sizes and the
# clip's crop from them), the VGGSound MelGAN; the token grid is the codebook's over the crop
PAPER = {"dataset": "vas", "codebook": "vas", "vocoder": "vggsound", "batches": (1, 16, 64), "train_steps": 3}
SMOKE = {"codebook": "tiny", "vocoder": "tiny", "gpt": {"n_layer": 2, "n_head": 2, "n_embd": 32}, "S": 4,
         "feat_depth": 2048, "crop_len": 8 * FRAMES_PER_COLUMN, "batches": (1, 2), "top_k": 16, "codebook_batch": 2,
         "transformer_batch": 2, "train_steps": 1, "num_tokens": 40}  # a 5 x 8 grid: 8 code columns


def paper_sizes() -> dict[str, Any]:
    """PAPER with the sizes of its presets, as the stages compose them (train_transformer dataset=vas)."""
    cfg = compose_stage("train_transformer", [f"dataset={PAPER['dataset']}"])
    t = cfg.transformer
    return {**PAPER, "gpt": {key: int(t[key]) for key in ("n_layer", "n_head", "n_embd")},
            "S": int(t.feat_sample_size), "feat_depth": int(t.feat_depth), "top_k": int(t.sampling.top_k),
            "crop_len": int(cfg.data.crop_len), "transformer_batch": int(t.optim.batch_size),
            "codebook_batch": int(preset("codebook", PAPER["codebook"]).optim.batch_size)}


def build_models(sizes: dict, device: torch.device):
    """(wrapper: codebook + GPT + permuter, MelGAN generator) of `sizes` on `device`, random weights, eval mode; the
    grid is the codebook's latent grid of a crop_len clip."""
    torch.manual_seed(0)
    codebook = build_codebook(preset("codebook", sizes["codebook"]).model)
    H, W = codebook_grid(codebook, sizes["crop_len"])
    gpt = GPTFeats(vocab_size=codebook.n_embed, block_size=sizes["S"] + H * W, feat_depth=sizes["feat_depth"],
                   **sizes["gpt"])
    model = Net2NetTransformer(codebook, gpt, ColumnMajor(H, W)).to(device).eval()
    generator = Generator(**OmegaConf.to_container(preset("vocoder", sizes["vocoder"]).model.netG)).to(device).eval()
    return model, generator


def linear_bytes(model: torch.nn.Module) -> int:
    """Bytes of every nn.Linear weight and bias: what one cached step must read."""
    return sum(p.numel() * p.element_size() for m in model.modules() if isinstance(m, torch.nn.Linear)
               for p in m.parameters())
