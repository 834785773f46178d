"""The stage-2 transformer: minGPT with the original's parameter names, plus a key/value cache.

State-dict layout (the original's, spec §4.8): `tok_emb`, `pos_emb` (1, block_size, n_embd), `blocks.{i}.{ln1,
ln2, attn.{key, query, value, proj}, attn.mask, mlp.0, mlp.2}`, `ln_f`, `head` (no bias), and the condition's
`embedder`. The causal `attn.mask` buffer (1, 1, block_size, block_size) is saved, as in the original, so that
checkpoints load strictly; the fast path uses SDPA's own causal masking, the mask is read only when attention
maps are requested.

Conditioning (spec §4.2, §4.7): the condition's S embeddings come first, the tokens after them, and learned
positions are added to the concatenation. The whole sequence is causally masked, condition included.
- `GPTFeats`: features (B, feat_depth, S) -> Conv1d(feat_depth, n_embd, 1) -> (B, S, n_embd).
- `GPTClass`: class ids (B,) or (B, 1) -> nn.Embedding(n_classes, n_embd) -> (B, 1, n_embd).
- "No Feats" is a `GPTFeats` fed random U[0, 1) vectors (the data layer draws them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class KVCache:
    """Preallocated keys and values of every layer, filled left to right.

    `k` and `v` are (n_layer, B, n_head, max_len, head_dim); `length` positions hold valid entries. New
    entries are written in place, so a step costs no copy of the cache.
    """

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def reset(self) -> None:
        self.length = 0


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate key/query/value projections (minGPT naming)."""

    def __init__(
        self, n_embd: int, n_head: int, block_size: int, attn_pdrop: float = 0.0, resid_pdrop: float = 0.0
    ) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd {n_embd} is not divisible by n_head {n_head}")
        self.n_head = n_head
        self.key = nn.Linear(n_embd, n_embd)
        self.query = nn.Linear(n_embd, n_embd)
        self.value = nn.Linear(n_embd, n_embd)
        self.attn_drop = nn.Dropout(attn_pdrop)
        self.resid_drop = nn.Dropout(resid_pdrop)
        self.proj = nn.Linear(n_embd, n_embd)
        self.qkv: nn.Linear | None = None  # set by `fuse_qkv` (inference copies only)
        # saved in the state dict like the original's, which ties a checkpoint to its block_size
        self.register_buffer(
            "mask", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size)
        )

    def fuse_qkv(self) -> None:
        """Replaces query/key/value by one Linear `qkv` (C -> 3C: query, key, value), read once per call.

        For inference copies: the state dict then holds `attn.qkv.*` instead of the original's names, and
        sums may differ from the separate products in the last bit.
        """
        if self.qkv is not None:
            return
        fused = nn.Linear(self.query.in_features, 3 * self.query.out_features, device=self.query.weight.device,
                          dtype=self.query.weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([self.query.weight, self.key.weight, self.value.weight]))  # (3C, C)
            fused.bias.copy_(torch.cat([self.query.bias, self.key.bias, self.value.bias]))
        self.qkv = fused
        del self.query, self.key, self.value

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, n_head, T, head_dim)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False, cache: KVCache | None = None, layer: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, C) -> (y (B, T, C), attention (B, n_head, T, T) or None).

        With `cache`, x holds the positions `cache.length .. cache.length + T - 1`; their keys and values are
        written into the cache and the queries attend to every cached position before them (the caller
        advances `length`).
        """
        B, T, C = x.shape
        if self.qkv is not None:
            q, k, v = (self._heads(t) for t in self.qkv(x).split(C, dim=-1))
        else:
            q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        att = None
        if cache is not None:
            start = cache.length
            end = start + T
            if end > cache.max_len:
                raise ValueError(f"the KV cache holds {cache.max_len} positions, {end} were asked for")
            cache.k[layer, :, :, start:end] = k
            cache.v[layer, :, :, start:end] = v
            k, v = cache.k[layer, :, :, :end], cache.v[layer, :, :, :end]  # (B, n_head, end, head_dim), views
            if T == 1:
                mask = None  # one new query sees every cached position
            else:
                mask = self.mask[0, 0, start:end, :end].bool()  # (T, end): query start+i sees keys <= start+i
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0)
        elif return_attention:
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))  # (B, n_head, T, T)
            scores = scores.masked_fill(self.mask[:, :, :T, :T] == 0, float("-inf"))
            att = self.attn_drop(F.softmax(scores, dim=-1))
            y = att @ v
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.attn_drop.p if self.training else 0.0
            )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, n_head * head_dim)
        return self.resid_drop(self.proj(y)), att

    def forward_static(self, x: torch.Tensor, pos: torch.Tensor, visible: torch.Tensor, cache: KVCache,
                       layer: int) -> torch.Tensor:
        """One position per sequence, x (B, 1, C), at the device-side index `pos` (1,): its key and value go to
        cache slot `pos` and the query attends over every slot, `visible` (1, 1, 1, max_len) masking those after
        `pos`. No shape or Python value depends on the position (see `GPT.step_static`)."""
        B, T, C = x.shape
        if self.qkv is not None:
            q, k, v = (self._heads(t) for t in self.qkv(x).split(C, dim=-1))
        else:
            q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        keys, values = cache.k[layer], cache.v[layer]  # (B, n_head, max_len, head_dim)
        keys[:, :, pos] = k  # an index_put_ at slot `pos`: a compiler updates the cache in place (no copy of it)
        values[:, :, pos] = v
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible, dropout_p=0.0)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(
        self, n_embd: int, n_head: int, block_size: int, attn_pdrop: float = 0.0, resid_pdrop: float = 0.0
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size, attn_pdrop, resid_pdrop)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd),
            nn.GELU(),
            nn.Linear(4 * n_embd, n_embd),
            nn.Dropout(resid_pdrop),
        )

    def forward(
        self, x: torch.Tensor, return_attention: bool = False, cache: KVCache | None = None, layer: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, att = self.attn(self.ln1(x), return_attention, cache, layer)
        x = x + a
        x = x + self.mlp(self.ln2(x))
        return x, att

    def forward_static(self, x: torch.Tensor, pos: torch.Tensor, visible: torch.Tensor, cache: KVCache,
                       layer: int) -> torch.Tensor:
        x = x + self.attn.forward_static(self.ln1(x), pos, visible, cache, layer)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """minGPT over token ids, optionally after a prefix of condition embeddings.

    Dropouts default to 0, as in every original config (spec §4.2).
    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int = 24,
        n_head: int = 16,
        n_embd: int = 1024,
        embd_pdrop: float = 0.0,
        resid_pdrop: float = 0.0,
        attn_pdrop: float = 0.0,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(1, block_size, n_embd))
        self.drop = nn.Dropout(embd_pdrop)
        self.blocks = nn.Sequential(
            *[Block(n_embd, n_head, block_size, attn_pdrop, resid_pdrop) for _ in range(n_layer)]
        )
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)

    @torch.no_grad()
    def init_time_aligned(
        self, times: torch.Tensor, condition_length: int, logit: float = 16.0, condition_scale: float = 2.0,
        token_scale: float = 0.3,
    ) -> None:
        """Restarts `pos_emb` and block 0's query and key so that each token position starts attending to the
        condition positions of its own time.

        `times` (block_size,) int64 is each position's time (e.g. the clip column a condition frame shows or a
        token position predicts); the first `condition_length` positions are the condition's. Every time gets a
        random code (N(0, 1) over n_embd / 2 channels): condition positions carry it in the first half of the
        channels (x condition_scale, against ~0.7 for the embedding of unit-scale features), token positions in
        the second half (x token_scale, against the token embeddings' 0.02). Block 0's key reads the first half
        and its query the second half through one random matrix (q.k / sqrt(head size) ~ `logit` for one code
        in unit-scale activations), so a token's query meets its own frame's key and no token's: at the start a
        token puts most of block 0's attention on its frame, and its sound can follow what the frame shows.

        The original starts `pos_emb` at zero and a random attention, and learns which frame a token belongs to;
        a GPT of a few layers and a few hundred steps does not (its frame is 1 of ~300 positions at uniform
        attention). An initialisation only: the architecture, the forward pass and the state dict are the
        original's.
        """
        times = torch.as_tensor(times, dtype=torch.long, device=self.pos_emb.device)
        if times.shape != (self.block_size,):
            raise ValueError(f"times has shape {tuple(times.shape)}, the GPT has {self.block_size} positions")
        S, half, head = int(condition_length), self.n_embd // 2, self.n_embd // self.n_head
        codes = torch.randn(int(times.max()) + 1, half, device=self.pos_emb.device)
        pos = torch.zeros_like(self.pos_emb[0])
        pos[:S, :half] = condition_scale * codes[times[:S]]
        pos[S:, half:] = token_scale * codes[times[S:]]
        self.pos_emb.copy_(pos[None])
        std = math.sqrt(logit / (math.sqrt(head) * half))
        shared = torch.randn(self.n_embd, half, device=self.pos_emb.device) * std
        attn = self.blocks[0].attn
        attn.key.weight.zero_()
        attn.key.weight[:, :half] = shared
        attn.query.weight.zero_()
        attn.query.weight[:, half:] = shared

    # --- condition
    # -------------------------------------------------------------------------------------------
    def embed_condition(self, cond: torch.Tensor | None) -> torch.Tensor | None:
        """The condition's embeddings (B, S, n_embd); the plain GPT has no condition."""
        return None

    def condition_length(self, cond: torch.Tensor | None) -> int:
        """S, the number of positions the condition takes."""
        return 0

    # --- forward
    # ---------------------------------------------------------------------------------------------
    def embed(self, idx: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """[condition embeddings, token embeddings] (B, S + T, n_embd), before positions are added."""
        tokens = self.tok_emb(idx)  # (B, T, n_embd)
        prefix = self.embed_condition(cond)
        return tokens if prefix is None else torch.cat([prefix.to(tokens.dtype), tokens], dim=1)

    def forward_embeddings(
        self,
        x: torch.Tensor,
        return_attention: bool = False,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings (B, T, n_embd) -> logits (B, T, vocab) and the last layer's attention.

        With `cache`, x holds positions `cache.length ..`; the cache is advanced by T. `last_only` computes
        the head for the last position only (B, 1, vocab).
        """
        B, T, _ = x.shape
        start = cache.length if cache is not None else 0
        if start + T > self.block_size:
            raise ValueError(f"sequence of {start + T} positions exceeds block_size {self.block_size}")
        x = self.drop(x + self.pos_emb[:, start : start + T])
        att = None
        for i, block in enumerate(self.blocks):
            x, att = block(x, return_attention and i == len(self.blocks) - 1, cache, i)
        if cache is not None:
            cache.length += T
        if last_only:
            x = x[:, -1:]
        return self.head(self.ln_f(x)), att

    def forward(self, idx: torch.Tensor, cond: torch.Tensor | None = None, return_attention: bool = False):
        """idx (B, T) int64 and the condition -> logits (B, S+T, vocab) [, attention (B, heads, S+T, S+T)]."""
        logits, att = self.forward_embeddings(self.embed(idx, cond), return_attention)
        return (logits, att) if return_attention else logits

    def fuse_qkv(self) -> GPT:
        """Fuses every layer's query/key/value into one Linear, in place (inference copies; see the attention's)."""
        for block in self.blocks:
            block.attn.fuse_qkv()
        return self

    # --- incremental decoding
    # --------------------------------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int | None = None, zeros: bool = False) -> KVCache:
        """An empty cache for `batch_size` sequences of up to `max_len` (default block_size) positions.

        `zeros` fills it with zeros (`step_static` attends over every slot, masked ones included, and a masked
        slot must not hold a NaN that 0 x NaN would let through)."""
        max_len = max_len or self.block_size
        p = self.pos_emb
        shape = (self.n_layer, batch_size, self.n_head, max_len, self.n_embd // self.n_head)
        make = torch.zeros if zeros else torch.empty
        return KVCache(make(shape, dtype=p.dtype, device=p.device), make(shape, dtype=p.dtype, device=p.device))

    def prefill(self, idx: torch.Tensor, cond: torch.Tensor | None, cache: KVCache) -> torch.Tensor:
        """Resets the cache, runs [condition, idx] through it -> the last position's logits (B, vocab)."""
        cache.reset()
        logits, _ = self.forward_embeddings(self.embed(idx, cond), cache=cache, last_only=True)
        return logits[:, -1]

    def step(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Appends tokens idx (B,) or (B, T) after the cached ones -> the last logits (B, vocab)."""
        if idx.dim() == 1:
            idx = idx[:, None]  # (B, 1)
        logits, _ = self.forward_embeddings(self.tok_emb(idx), cache=cache, last_only=True)
        return logits[:, -1]

    def step_static(self, idx: torch.Tensor, pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One token per sequence, idx (B, 1), at position `pos` (an int64 tensor (1,) on the model's device)
        -> its logits (B, vocab); equal to `step` at cache.length == pos up to rounding.

        Fixed shapes and no host-side dependence on the position (the keys and values are written at the
        device-side index, attention runs over all `cache.max_len` slots with the later ones masked), so one call
        can be captured as a CUDA graph and replayed for every position, or compiled once. The cache must start
        zero-filled (`new_cache(..., zeros=True)`); `cache.length` is not read or advanced: the caller owns
        `pos`.
        """
        x = self.tok_emb(idx) + self.pos_emb[0].index_select(0, pos)[None]  # (B, 1, n_embd)
        visible = (torch.arange(cache.max_len, device=pos.device) <= pos).view(1, 1, 1, -1)
        for i, block in enumerate(self.blocks):
            x = block.forward_static(x, pos, visible, cache, i)
        return self.head(self.ln_f(x))[:, -1]


class GPTFeats(GPT):
    """GPT conditioned on per-frame visual features (B, feat_depth, S) through a 1x1 Conv1d."""

    def __init__(self, vocab_size: int, block_size: int, feat_depth: int = 2048, **kwargs) -> None:
        super().__init__(vocab_size, block_size, **kwargs)
        # created after the GPT init, so it keeps PyTorch's default init like the original's
        self.embedder = nn.Conv1d(feat_depth, self.n_embd, kernel_size=1)

    def embed_condition(self, cond: torch.Tensor | None) -> torch.Tensor:
        if cond is None or cond.dim() != 3:
            raise ValueError(
                f"GPTFeats needs features (B, feat_depth, S), got "
                f"{None if cond is None else tuple(cond.shape)}"
            )
        w = self.embedder.weight
        return self.embedder(cond.to(w.dtype)).permute(0, 2, 1)  # (B, n_embd, S) -> (B, S, n_embd)

    def condition_length(self, cond: torch.Tensor | None) -> int:
        return cond.shape[-1]


class GPTClass(GPT):
    """GPT conditioned on a class id (one position), embedded by nn.Embedding(n_classes, n_embd)."""

    def __init__(self, vocab_size: int, block_size: int, n_classes: int, **kwargs) -> None:
        super().__init__(vocab_size, block_size, **kwargs)
        self.embedder = nn.Embedding(n_classes, self.n_embd)  # default init, created after the GPT init

    def embed_condition(self, cond: torch.Tensor | None) -> torch.Tensor:
        if cond is None or cond.dtype not in (torch.int64, torch.int32) or cond.dim() not in (1, 2):
            raise ValueError("GPTClass needs class ids (B,) or (B, 1) as int64")
        return self.embedder(cond.reshape(-1, 1).long())  # (B, 1, n_embd)

    def condition_length(self, cond: torch.Tensor | None) -> int:
        return 1


def build_gpt(condition: str = "features", **kwargs) -> GPT:
    """`condition` features|none -> GPTFeats, class -> GPTClass, unconditional -> GPT; kwargs: the model's."""
    if condition in ("features", "none"):
        kwargs.pop("n_classes", None)
        return GPTFeats(**kwargs)
    if condition == "class":
        kwargs.pop("feat_depth", None)
        return GPTClass(**kwargs)
    if condition == "unconditional":
        kwargs.pop("n_classes", None)
        kwargs.pop("feat_depth", None)
        return GPT(**kwargs)
    raise ValueError(f"condition must be features, class or none, got {condition!r}")
