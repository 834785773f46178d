"""Sampling codebook tokens from the transformer: a KV-cached sampler and the original's reference procedure.

Both functions return tokens (B, num_tokens) int64 in sequence (column-major) order; the wrapper's
`decode_to_spec` turns them into spectrograms.

The original (spec §4.6(2), §9.1) recomputes the whole sequence for every token. For step (i, j) (row i of
column j) it forwards [condition, the tokens of a 5 x 53 window] whose first column is js = clamp(j - 26, 0,
cols - 53) and reads the logits at the local position (j - js) * 5 + i. For 265 tokens js is always 0 and this
is the plain 10-s sampler. Because the mask is causal, only the window's tokens before the local position
matter, so a sampler may instead keep the keys and values of [condition, window tokens so far].

`sample` does so, and is exact (greedy tokens equal the reference's): while the window stays put it appends
one token per step to a preallocated cache; when the window moves (once per new column after column 26, all 5
rows of a column share one window) positions shift under the learned position embeddings, so it rebuilds the
cache with one batched forward over [condition, the 26 columns before j] (S + 130 positions) and then steps
through the column's 5 rows. A 10-s clip costs one prefill plus 265 single-token steps; W = 53k columns cost
one prefill per column after the first 27.

Condition alignment in long samples: by default the **whole** condition is passed at every step, as the
original's tool does, so a 20-s sample is conditioned on the same S frames throughout. With `slide_cond=True`
the condition is read as covering the whole output (S_total frames over all columns) and every window gets its
own S frames starting at frame round(js * S_total / cols), clamped to the end; with S_total = 212k frames for
53k columns that is 4 frames per column, the frames under the window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch

from models.gpt import GPT
from pipeline.generate.settings import MODES
from pipeline.media.mel import CROP_LEN, FRAMES_PER_COLUMN, N_MELS

PAPER_GRID = (N_MELS // FRAMES_PER_COLUMN, CROP_LEN // FRAMES_PER_COLUMN)  # 5 x 53: a bare GPT's grid unless given


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Sets to -inf every logit outside the top-k (kept: logits >= the k-th largest, ties kept) and outside
    the nucleus (the smallest set of most probable tokens whose probability reaches top_p)."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # probability mass of the more probable tokens
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False  # the most probable token always stays
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def pick_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits (B, vocab) -> tokens (B,): argmax when greedy, else a draw after temperature, top-k, top-p.

    The draw happens on the generator's device (a CPU generator with a GPU model draws on the CPU), so a seed
    gives the same tokens wherever the model runs.
    """
    if greedy:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.to(generator.device), 1, generator=generator)[:, 0].to(probs.device)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def gpt_of(model) -> GPT:
    gpt = getattr(model, "transformer", model)
    if not isinstance(gpt, GPT):
        raise TypeError(f"expected a GPT or a wrapper with a .transformer GPT, got {type(model).__name__}")
    return gpt


def grid_of(model, grid: tuple[int, int] | None) -> tuple[int, int]:
    """`grid` when given, else the wrapper's (its permuter's H x W, its codebook's), else the paper's."""
    if grid is not None:
        return grid
    permuter = getattr(model, "first_stage_permuter", None)
    return (permuter.H, permuter.W) if permuter is not None else PAPER_GRID


def _plan(gpt: GPT, cond, num_tokens: int, mode: str, gt_tokens, grid, batch: int):
    """Checks the arguments; returns (H, W, cols, n_prime, S)."""
    H, W = grid
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if num_tokens > H * W and num_tokens % H:
        raise ValueError(f"a long sample (> {H * W} tokens) needs whole {H}-row columns, got {num_tokens}")
    cols = -(-num_tokens // H)
    n_prime = 0
    if mode == "half":
        n_prime = (cols // 2) * H  # 130 for a 10-s clip, as generate_samples.py and the tool do
        if gt_tokens is None or gt_tokens.shape[1] < n_prime or gt_tokens.shape[0] != batch:
            raise ValueError(f"mode 'half' needs gt_tokens (B={batch}, >= {n_prime}) in sequence order")
    S = gpt.condition_length(cond)
    if S + min(num_tokens, H * W) - 1 > gpt.block_size:
        raise ValueError(
            f"condition of {S} positions + {min(num_tokens, H * W) - 1} tokens exceeds the model's "
            f"block_size {gpt.block_size}: is feat_sample_size the one it was trained with?"
        )
    return H, W, cols, n_prime, S


def _window_start(col: int, cols: int, W: int) -> int:
    return max(0, min(col - W // 2, cols - W))


def _window_cond(cond, js: int, cols: int, S: int, slide_cond: bool):
    if not slide_cond:
        return cond
    total = cond.shape[-1]
    f0 = max(0, min(round(js * total / cols), total - S))
    return cond[..., f0 : f0 + S]


def _batch_size(cond, gt_tokens) -> int:
    if cond is not None:
        return cond.shape[0]
    if gt_tokens is not None:
        return gt_tokens.shape[0]
    raise ValueError("cannot tell the batch size without a condition or gt_tokens")


def sample(model, cond, num_tokens: int | None = None, **options) -> torch.Tensor:
    """KV-cached sampling of `num_tokens` tokens (B, num_tokens), exact w.r.t. `sample_uncached`.

    model: the wrapper (uses .transformer and the permuter's grid) or a GPT. cond: features (B, D, S) or class
    ids (B,). `options` are `sample_steps`'s: mode 'nopix' (from scratch) or 'half' (the first (cols // 2) * 5
    tokens copied from gt_tokens); temperature, top_k, top_p, generator, greedy. num_tokens defaults to one
    window (H * W: 265 on the 5 x 53 grid); more samples 5 x (num_tokens / 5) with the sliding window (module
    docstring). With `slide_cond`, `cond_frames` is the frames per window (default: block_size - H * W). `grid`
    replaces the model's (a bare GPT's is the paper's 5 x 53). The fast path (bf16, a static cache, CUDA graphs)
    is `pipeline.generate.decoding.TokenSampler`, which the stages use.
    """
    for _, tokens in sample_steps(model, cond, num_tokens, **options):
        pass
    return tokens


@dataclass
class SamplingCall:
    """One sampling call's checked arguments, shared by `sample_steps` and `sample_uncached`."""

    gpt: GPT
    B: int
    num_tokens: int
    H: int
    W: int
    cols: int
    n_prime: int                                   # tokens copied from gt_tokens (mode 'half')
    S: int                                         # condition positions of a window
    window_cond: Callable[[int], torch.Tensor | None]  # the condition of the window starting at column js
    pick: Callable[[torch.Tensor], torch.Tensor]   # logits (B, vocab) -> tokens (B,)
    gt_tokens: torch.Tensor | None

    def primed(self, length: int) -> torch.Tensor:
        """A zero buffer (B, length) on the model's device with the n_prime primer tokens in place."""
        tokens = torch.zeros(self.B, length, dtype=torch.long, device=self.gpt.pos_emb.device)
        if self.n_prime:
            tokens[:, :self.n_prime] = self.gt_tokens[:, :self.n_prime].to(tokens.device)
        return tokens


def sampling_call(
    model,
    cond,
    num_tokens: int | None = None,
    mode: str = "nopix",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    gt_tokens: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    greedy: bool = False,
    slide_cond: bool = False,
    cond_frames: int | None = None,
    grid: tuple[int, int] | None = None,
) -> SamplingCall:
    """Checks a sampling call's arguments (documented at `sample`)."""
    gpt = gpt_of(model)
    device = gpt.pos_emb.device
    cond = cond.to(device) if cond is not None else None
    B = _batch_size(cond, gt_tokens)
    H, W = grid_of(model, grid)
    num_tokens = H * W if num_tokens is None else int(num_tokens)
    S_win = cond_frames or gpt.block_size - H * W
    window_cond = partial(_window_cond, cond, cols=-(-num_tokens // H), S=S_win, slide_cond=slide_cond)
    H, W, cols, n_prime, S = _plan(gpt, window_cond(0), num_tokens, mode, gt_tokens, (H, W), B)
    pick = partial(pick_token, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, generator=generator)
    return SamplingCall(gpt, B, num_tokens, H, W, cols, n_prime, S, window_cond, pick, gt_tokens)


@torch.inference_mode()
def sample_steps(model, cond, num_tokens: int | None = None, **options) -> Iterator[tuple[int, torch.Tensor]]:
    """`sample` (its arguments are documented there), one token at a time: yields (tokens done, the
    (B, num_tokens) buffer) after every sampled token, and once with the primed buffer before the first.
    The buffer is updated in place (copy what you keep); positions from `tokens done` on hold 0. Draining it
    gives exactly `sample`'s tokens (`sample` does)."""
    call = sampling_call(model, cond, num_tokens, **options)
    yield from decode_steps(call, CacheStepper(call.gpt, call.B, call.S + min(call.num_tokens, call.H * call.W)))


class CacheStepper:
    """The exact path's cache: `GPT.prefill` and `GPT.step` over a KV cache that grows one position per token.
    A stepper gives `decode_steps` the logits after a prefill or after one more token; the fast path's is
    `pipeline.generate.decoding.StaticDecoder`."""

    def __init__(self, gpt: GPT, batch: int, length: int) -> None:
        self.gpt, self.cache = gpt, gpt.new_cache(batch, length)

    def prefill(self, tokens: torch.Tensor, cond) -> torch.Tensor:
        """[cond, tokens (B, T)] from an empty cache -> the last position's logits (B, vocab)."""
        return self.gpt.prefill(tokens, cond, self.cache)

    def step(self, token: torch.Tensor, position: int) -> torch.Tensor:
        """token (B, 1) at sequence position `position` (the cache holds the positions before) -> logits."""
        return self.gpt.step(token, self.cache)


def decode_steps(call: SamplingCall, stepper) -> Iterator[tuple[int, torch.Tensor]]:
    """The cached decoding loop of `sample_steps` over a stepper (`CacheStepper`, or the fast path's
    `StaticDecoder`): while the window stays put one token per step; when it moves (module docstring), a prefill
    of [its condition, its tokens so far]."""
    H, W, S = call.H, call.W, call.S
    tokens = call.primed(call.num_tokens)
    yield call.n_prime, tokens
    current_js = None  # the window in the cache
    for pos in range(call.n_prime, call.num_tokens):
        js = _window_start(pos // H, call.cols, W)
        if js != current_js:  # new window: positions shift, rebuild the cache in one forward
            logits = stepper.prefill(tokens[:, js * H : pos], call.window_cond(js))
            current_js = js
        else:  # the token before pos, at its place in the window's sequence
            logits = stepper.step(tokens[:, pos - 1 : pos], S + pos - 1 - js * H)
        tokens[:, pos] = call.pick(logits)
        yield pos + 1, tokens


@torch.inference_mode()
def last_step_attention(
    model,
    cond,
    tokens: torch.Tensor,
    slide_cond: bool = False,
    cond_frames: int | None = None,
    grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The last layer's attention (mean over heads) of the step that sampled the last of `tokens` (B, N) over
    its window's condition positions: (B, S), each row summing to at most 1 (the rest went to the tokens).

    One uncached forward of [the window's condition, the window's tokens before the last] with explicit
    attention weights, after sampling: the samplers' own fast path is untouched.
    """
    gpt = gpt_of(model)
    device = gpt.pos_emb.device
    cond = cond.to(device) if cond is not None else None
    tokens = tokens.to(device)
    H, W = grid_of(model, grid)
    num_tokens = tokens.shape[1]
    cols = -(-num_tokens // H)
    pos = num_tokens - 1
    js = _window_start(pos // H, cols, W)
    c = _window_cond(cond, js, cols, cond_frames or gpt.block_size - H * W, slide_cond)
    S = gpt.condition_length(c)
    if S == 0:
        raise ValueError("an unconditional model has no condition positions to attend to")
    _, att = gpt(tokens[:, js * H : pos], c, return_attention=True)  # (B, heads, S + local, S + local)
    return att[:, :, S - 1 + pos - js * H, :S].mean(dim=1).float()


@torch.inference_mode()
def sample_uncached(model, cond, num_tokens: int | None = None, steps: list[int] | None = None,
                    **options) -> torch.Tensor:
    """The original's procedure (spec §4.6(2), §9.1): a zero-filled buffer and, for every step, a forward of
    [condition, the window's 5 * 53 - 1 buffer slots], reading the logits at the step's local position
    (arguments as `sample`'s).

    `steps` (positions) restricts the loop to those steps, for timing a sample of them or spot-checking
    another sampler: the other slots then hold `gt_tokens` where given (all of them, whatever the mode), else
    0.
    """
    call = sampling_call(model, cond, num_tokens, **options)
    gpt, H, W, num_tokens, gt_tokens = call.gpt, call.H, call.W, call.num_tokens, call.gt_tokens
    buffer = call.primed(max(num_tokens, H * W))
    if steps is not None and gt_tokens is not None:
        buffer[:, : gt_tokens.shape[1]] = gt_tokens[:, : buffer.shape[1]].to(buffer.device)
    for pos in steps if steps is not None else range(call.n_prime, num_tokens):
        js = _window_start(pos // H, call.cols, W)
        c = call.window_cond(js)
        logits = gpt(buffer[:, js * H : js * H + H * W - 1], c)  # (B, S + 264, vocab)
        local = pos - js * H
        buffer[:, pos] = call.pick(logits[:, gpt.condition_length(c) - 1 + local])
    return buffer[:, :num_tokens]
