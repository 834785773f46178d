"""The Net2Net-style wrapper of stage 2: a frozen codebook, the column-major permuter and the GPT (spec §4.4).

State-dict layout (the original's): `first_stage_model.*` (a VQModel without `loss.*`),
`first_stage_permuter.*`, `transformer.*`. The condition (features (B, D, S) or class ids (B,)) goes to the
GPT as it is; the original's cond stages (RawFeatsStage, ClassOnlyStage) are identities without parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.gpt import GPT
from models.permuter import ColumnMajor


class Net2NetTransformer(nn.Module):
    """Codebook (frozen, always in eval mode) + permuter + GPT; only `transformer` is trained."""

    def __init__(
        self, first_stage_model: nn.Module, transformer: GPT, permuter: ColumnMajor | None = None
    ) -> None:
        super().__init__()
        self.first_stage_model = first_stage_model
        self.first_stage_permuter = permuter if permuter is not None else ColumnMajor()
        self.transformer = transformer
        for p in self.first_stage_model.parameters():
            p.requires_grad_(False)
        self.first_stage_model.eval()

    def train(self, mode: bool = True) -> "Net2NetTransformer":
        super().train(mode)
        self.first_stage_model.eval()  # the codebook stays frozen, as the original's disabled_train
        return self

    @property
    def num_tokens(self) -> int:
        """Tokens of one 10-s clip: H * W = 265."""
        return self.first_stage_permuter.H * self.first_stage_permuter.W

    @torch.no_grad()
    def encode_to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Spectrograms (B, 1, F, T) or (B, F, T) in [-1, 1] -> tokens (B, F' * T'), column-major."""
        if x.dim() == 3:
            x = x.unsqueeze(1)  # (B, 1, F, T)
        with torch.autocast(
            x.device.type, enabled=False
        ):  # the frozen codebook picks codes in fp32 under AMP
            indices = self.first_stage_model.encode_indices(x.float())  # (B, F', T') raster
        return self.first_stage_permuter(indices.reshape(indices.shape[0], -1))  # (B, F' * T')

    def loss_from_tokens(self, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the GPT over every token (spec §4.4).

        Input: S condition embeddings + tokens z_0 .. z_{L-2}; logits from position S - 1 on, so output S - 1
        + i predicts z_i (z_0 from the last condition position); the mean over B x L targets.
        """
        S = self.transformer.condition_length(cond)
        logits = self.transformer(tokens[:, :-1], cond)  # (B, S + L - 1, vocab)
        logits = logits[:, S - 1 :]  # (B, L, vocab)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))

    def forward(self, x: torch.Tensor | None, cond: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Spectrograms (B, 1, F, T) and their condition -> the training loss; with `tokens` (B, L) (the
        spectrograms' codes, encoded before), x is not read. Through forward, so that DDP sees the call."""
        return self.loss_from_tokens(self.encode_to_tokens(x) if tokens is None else tokens, cond)

    @torch.no_grad()
    def decode_to_spec(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, H * W') in column-major order -> spectrograms (B, 1, 16 H, 16 W') in [-1, 1]-ish.

        W' may be any whole number of columns (longer samples decode as one wider grid).
        """
        H = self.first_stage_permuter.H
        raster = self.first_stage_permuter(tokens, reverse=True)  # (B, H * W')
        return self.first_stage_model.decode_code(raster.view(tokens.shape[0], H, -1))  # (B, 1, 16 H, 16 W')

    def position_columns(self, frames: int) -> torch.Tensor:
        """The clip column of every GPT position (block_size,): condition frame j shows column j * W // frames;
        the position holding token i predicts token i + 1, so it gets that token's column (the permuter's
        order); the last position, never an input in training, its own token's."""
        H, W = self.first_stage_permuter.H, self.first_stage_permuter.W
        device = self.first_stage_permuter.forward_shuffle_idx.device
        token_columns = self.first_stage_permuter(torch.arange(W, device=device).repeat(H)[None])[0]  # f * W + t -> t
        frame_columns = torch.arange(frames, device=device) * W // frames
        return torch.cat([frame_columns, token_columns[1:], token_columns[-1:]])

    def init_time_aligned(self) -> None:
        """Starts the GPT with each token attending to the condition frames of its own column
        (`GPT.init_time_aligned` over `position_columns`); the condition's frames are the GPT's positions before
        the tokens (block_size - H * W)."""
        frames = self.transformer.block_size - self.num_tokens
        self.transformer.init_time_aligned(self.position_columns(frames), frames)

    def transformer_param_groups(self, weight_decay: float = 0.01) -> list[dict]:
        """AdamW groups (spec §4.5): decay for the weights of every nn.Linear in the transformer; none for
        biases, LayerNorm and Embedding weights, the condition embedder and `pos_emb`."""
        decay = set()
        for module_name, module in self.transformer.named_modules():
            if isinstance(module, nn.Linear):
                decay.add(f"{module_name}.weight" if module_name else "weight")
        params = dict(self.transformer.named_parameters())
        return [
            {"params": [p for n, p in params.items() if n in decay], "weight_decay": weight_decay},
            {"params": [p for n, p in params.items() if n not in decay], "weight_decay": 0.0},
        ]
