"""The one token sampler of the stages (`TokenSampler`) and its fast path (`StaticDecoder`).

Every stage that samples tokens goes through a `TokenSampler` built from the `sampling` config group
(`sampling.precision`, `sampling.compile`; conf/sampling/default.yaml): the sample stage (a split, a video, a
folder), the long-video sampler, the app and the training stage's logged samples, and `make bench-gpu` times the
same object, so a benchmark's figure is what a user gets.

Two paths (`decoding_path`):
- exact (`precision: fp32`, and `auto` on a CPU): `pipeline.generate.sampling.sample_steps` on the model as loaded,
  fp32, a KV cache that grows per token: the original's tokens (tested against its procedure).
- fast (`precision: bf16`, and `auto` on a GPU): a bf16 copy of the GPT with fused query/key/value
  (`inference_copy`) and a `StaticDecoder`: a zero-filled cache of fixed shape allocated once per batch size,
  every token one call of `GPT.step_static`, which on CUDA is compiled (`sampling.compile`: Inductor fuses each
  layer's pointwise work, layer norms, biases, GELU and residuals, into its matrix-vector products; batch 1, see
  `decoding_path`) and captured once as a CUDA graph replayed per token. Not exact (bf16); in fp32 the same
  decoder gives `sample`'s greedy tokens (tested), so the fast path's only approximation is its precision.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Any

import torch

from models.gpt import GPT
from pipeline.generate.sampling import decode_steps, gpt_of, grid_of, sample_steps, sampling_call
from pipeline.generate.settings import SamplingSettings

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Inductor options of the compiled decoding step: a batch-1 matrix-vector product becomes a reduction kernel that
# takes its neighbours' pointwise work (torch/_inductor/decomposition.py `mm`, only with coordinate-descent tuning)
COMPILE_OPTIONS = {"coordinate_descent_tuning": True, "triton.cudagraphs": False}


def inference_copy(model, dtype: torch.dtype = torch.float32, fuse_qkv: bool = True) -> GPT:
    """A copy of the model's GPT for cached sampling: in `dtype`, with each layer's query/key/value read as one
    product (`fuse_qkv`); the model is left as it is. In fp32 it samples the model's greedy tokens (sums may
    differ in the last bit); in bf16 only approximately."""
    gpt = copy.deepcopy(gpt_of(model)).eval()
    if fuse_qkv:
        gpt.fuse_qkv()
    return gpt.to(dtype)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`sampling.precision` -> fp32 or bf16: `auto` is bf16 on a CUDA device, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"sampling.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" else "fp32"


def decoding_path(device: torch.device, precision: str, compile_step: bool) -> dict[str, Any]:
    """What a `TokenSampler` on `device` does: {"dtype": fp32 | bf16, "fast": the static decoder (else the exact
    path), "graphs": CUDA graphs, "compiled": the batch-1 step compiled}.

    Only batch 1 is compiled: there a step is bound by its kernels' count and latency, which fusing cuts; each
    batch size is a compile of its own (about a minute), and larger batches already read each weight for many
    clips at once."""
    dtype = resolve_precision(precision, device)
    fast = dtype == "bf16"
    cuda = device.type == "cuda"
    return {"dtype": dtype, "fast": fast, "graphs": fast and cuda, "compiled": fast and cuda and compile_step}


def describe(path: dict[str, Any], batch_size: int | None = None) -> str:
    """A path of `decoding_path` in words, e.g. `bf16 static KV cache, compiled step at batch 1, CUDA graph`; at a
    given batch size, what runs there."""
    if not path["fast"]:
        return f"{path['dtype']} KV cache (exact)"
    parts = [f"{path['dtype']} static KV cache"]
    if path["compiled"] and batch_size in (None, 1):
        parts += ["compiled step" if batch_size == 1 else "compiled step at batch 1"]
    parts += ["CUDA graph" if path["graphs"] else "eager"]
    return ", ".join(parts)


class StaticDecoder:
    """The fast path's stepper (`pipeline.generate.sampling.decode_steps`): a zero-filled KV cache of S + H * W
    slots allocated once for a batch size and condition length, and `GPT.step_static` for every token: fixed
    shapes, so on CUDA the step is captured once as a CUDA graph (`graphs`) and replayed per token, after being
    compiled (`compiled`, Inductor with COMPILE_OPTIONS); elsewhere it runs eagerly. A window that moves (a long
    sample) is prefilled into the same cache.

    In fp32 it gives `sample`'s greedy tokens (equal logits up to rounding; tested), one window or sliding,
    modes 'nopix' and 'half'. Reuse one decoder for every batch of its shape: the cache, the graph and the
    compiled step are kept. If compiling fails (no Triton, an unsupported card), it warns and runs the eager step
    in the graph.
    """

    def __init__(self, gpt: GPT, batch_size: int, cond_length: int, grid: tuple[int, int], graphs: bool = False,
                 compiled: bool = False) -> None:
        self.gpt, (self.H, self.W) = gpt, grid
        self.batch_size, self.S = batch_size, cond_length
        device = gpt.pos_emb.device
        self.graphs, self.compiled = graphs, compiled
        self.cache = gpt.new_cache(batch_size, cond_length + self.H * self.W, zeros=True)
        self.idx = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.logits: torch.Tensor | None = None
        self.graph = None
        self.step_fn = gpt.step_static  # or its compiled form: what the graph records
        if compiled:
            self.step_fn = torch.compile(gpt.step_static, fullgraph=True, dynamic=False, options=COMPILE_OPTIONS)

    def reset(self) -> None:
        """Zeroes the cache: slots of a previous batch must not leak (masked slots are multiplied by 0)."""
        self.cache.k.zero_()
        self.cache.v.zero_()

    def prefill(self, tokens: torch.Tensor, cond) -> torch.Tensor:
        """[cond, tokens (B, T)] into the cache from slot 0 -> the last position's logits (B, vocab)."""
        return self.gpt.prefill(tokens, cond, self.cache)

    def step(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """Feeds tokens (B, 1) at sequence position `position` (condition included) -> the next logits (B, vocab),
        a buffer the next call overwrites (copy what you keep). The cache must hold the positions before."""
        self.idx.copy_(tokens)
        self.pos.fill_(position)
        return self._replay()

    def _replay(self) -> torch.Tensor:
        if not self.graphs:
            return self.step_fn(self.idx, self.pos, self.cache)
        if self.graph is None:
            self._capture()
        self.graph.replay()  # reads idx, pos and the cache; writes the cache slot and self.logits
        return self.logits

    def _capture(self) -> None:
        """Warm up on a side stream (compiling, tuning; it writes the slot the first replay writes again), then
        record one step as a CUDA graph. A compiled step that fails either way is replaced by the eager one."""
        try:
            self._record()
        except Exception as error:  # noqa: BLE001 - Inductor/Triton failures vary; the eager step always works
            if not self.compiled:
                raise
            log.warning("the compiled decoding step failed (%s: %s); the CUDA graph records the eager step",
                        type(error).__name__, str(error).splitlines()[0] if str(error) else "")
            self.compiled, self.step_fn, self.graph = False, self.gpt.step_static, None
            self._record()

    def _record(self) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.step_fn(self.idx, self.pos, self.cache)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self.step_fn(self.idx, self.pos, self.cache)
        self.graph = graph

    @torch.inference_mode()
    def steps(self, cond, num_tokens: int | None = None, **options) -> Iterator[tuple[int, torch.Tensor]]:
        """`pipeline.generate.sampling.sample_steps` (same arguments but `grid`) on this decoder's cache."""
        call = sampling_call(self.gpt, cond, num_tokens, grid=(self.H, self.W), **options)
        if call.B != self.batch_size or call.S != self.S:
            raise ValueError(f"this decoder was built for batch {self.batch_size} and {self.S} condition positions, "
                             f"got {call.B} and {call.S}: build one per shape")
        self.reset()
        yield from decode_steps(call, self)

    def sample(self, cond, num_tokens: int | None = None, **options) -> torch.Tensor:
        """`sample`'s tokens (B, num_tokens) (arguments as `steps`)."""
        for _, tokens in self.steps(cond, num_tokens, **options):
            pass
        return tokens


class TokenSampler:
    """Tokens from a transformer the way the stages sample them (module docstring): the exact path or the fast
    one, chosen by `decoding_path` from the model's device and `precision` / `compile_step` (the `sampling`
    group's `precision` and `compile`).

    Build one per loaded model and keep it: the fast path's bf16 copy, caches, graphs and compiled steps are
    made once (per batch size and condition length) and reused. `refresh()` copies the model's current weights
    into the fast copy (a model that trains on)."""

    def __init__(self, model, precision: str, compile_step: bool) -> None:
        self.model = model
        self.device = gpt_of(model).pos_emb.device
        self.grid = grid_of(model, None)
        self.path = decoding_path(self.device, precision, compile_step)
        self.gpt = (inference_copy(model, DTYPES[self.path["dtype"]]) if self.path["fast"] else gpt_of(model))
        self._decoders: dict[tuple[int, int], StaticDecoder] = {}

    @classmethod
    def from_config(cls, model, sampling_cfg) -> TokenSampler:
        """From a `sampling` config node (its `precision` and `compile`)."""
        return cls(model, str(sampling_cfg.precision), bool(sampling_cfg.compile))

    def __str__(self) -> str:
        return describe(self.path)

    @torch.no_grad()
    def refresh(self) -> None:
        """The fast copy takes the model's current weights (in place: graphs and compiled steps stay valid)."""
        if not self.path["fast"]:
            return
        fresh = inference_copy(self.model, DTYPES[self.path["dtype"]])
        for mine, theirs in zip(self.gpt.state_dict().values(), fresh.state_dict().values(), strict=True):
            mine.copy_(theirs)

    def decoder(self, batch_size: int, cond_length: int) -> StaticDecoder:
        """The fast path's decoder for this shape, made on first use."""
        key = (batch_size, cond_length)
        if key not in self._decoders:
            self._decoders[key] = StaticDecoder(self.gpt, batch_size, cond_length, self.grid,
                                                graphs=self.path["graphs"],
                                                compiled=self.path["compiled"] and batch_size == 1)
        return self._decoders[key]

    @torch.inference_mode()
    def steps(self, cond, settings: SamplingSettings, num_tokens: int | None = None,
              gt_tokens: torch.Tensor | None = None, generator: torch.Generator | None = None,
              **window) -> Iterator[tuple[int, torch.Tensor]]:
        """(tokens done, the (B, num_tokens) buffer) after every token, as `sample_steps` (`window`: its
        `slide_cond`, `cond_frames`)."""
        options = dict(**settings.options(), gt_tokens=gt_tokens, generator=generator, **window)
        if not self.path["fast"]:
            yield from sample_steps(self.gpt, cond, num_tokens, grid=self.grid, **options)
            return
        call = sampling_call(self.gpt, cond, num_tokens, grid=self.grid, **options)  # its batch and condition
        yield from self.decoder(call.B, call.S).steps(cond, num_tokens, **options)

    def sample(self, cond, settings: SamplingSettings, num_tokens: int | None = None, **options) -> torch.Tensor:
        """Tokens (B, num_tokens) (arguments as `steps`)."""
        for _, tokens in self.steps(cond, settings, num_tokens, **options):
            pass
        return tokens

    def autocast(self):
        """The precision of what follows the tokens (the codebook's decoder, the vocoder): bf16 autocast on the fast
        path on CUDA, else nothing."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.path["fast"] and self.device.type == "cuda")
