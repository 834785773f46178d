"""Copies of a GPT that only the CPU benchmarks time: int8 dynamic quantisation and column-major weights, on top of
the stages' `pipeline.generate.decoding.inference_copy` (fp32 or bf16, fused query/key/value)."""
from __future__ import annotations

import warnings

import torch

from models.gpt import GPT
from pipeline.generate.decoding import inference_copy


def bench_copy(model, dtype: torch.dtype = torch.float32, fuse_qkv: bool = True, int8: bool = False,
               column_major: bool = False) -> GPT:
    """`inference_copy(model, dtype, fuse_qkv)`, then:

    `int8`: torch's dynamic int8 quantisation of every nn.Linear (weights int8 per output row, activations quantised
    per call, fp32 elsewhere), a quarter of the bytes a cached step reads; only approximately the model's tokens.
    `column_major`: the weights of the n_embd-input layers (query/key/value or qkv, proj, mlp.0) stored
    column-major: the same fp32 values (the state dict's shapes and names are unchanged), but a batch-1 step's
    matrix-vector products then run over long contiguous rows, which MKL streams closer to the memory bandwidth;
    with fp32 that copy samples the same tokens as the model (sums may differ in the last bit).
    """
    if int8 and dtype != torch.float32:
        raise ValueError("int8 quantisation keeps fp32 activations: leave dtype at float32")
    if int8 and column_major:
        raise ValueError("column_major lays out float weights; int8 quantisation packs its own")
    gpt = inference_copy(model, dtype, fuse_qkv)
    if column_major:
        for layer in gpt.modules():
            if isinstance(layer, torch.nn.Linear) and layer.in_features == gpt.n_embd and layer is not gpt.head:
                layer.weight.data = layer.weight.data.t().contiguous().t()  # (out, in) values, (in, out) storage
    if int8:
        with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices
            warnings.simplefilter("ignore")
            qconfig = torch.ao.quantization.per_channel_dynamic_qconfig  # one scale per output row
            gpt = torch.ao.quantization.quantize_dynamic(gpt, {torch.nn.Linear: qconfig}, dtype=torch.qint8)
    return gpt
