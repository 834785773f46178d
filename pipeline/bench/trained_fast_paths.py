"""bf16 and int8 sampling judged on TRAINED weights: the demo's models (`make demo`), against fp32.

Random weights give nearly flat logits, where agreement between precisions means nothing; this reads the demo's
trained transformer (with its codebook) and classifier from the demo chain's run folder under the outputs folder
(`SPECVQGAN_OUTPUTS`, default `outputs/`; pipeline/demo/chain.py; only read, never written) and the demo's
validation split, and for each opt-in copy of
`pipeline.bench.copies.bench_copy` (bf16 weights; per-row int8 dynamic quantisation; both with fused qkv)
reports, against the exact fp32 sampler:
- greedy agreement: the share of greedy tokens equal to fp32's (free running, so one early difference changes
  the rest; and the mean position of the first difference), and the teacher-forced argmax agreement (both read
  fp32's greedy tokens);
- its samples (SAMPLES_PER_CLIP seeded draws per clip at the checkpoint's top-k, the same seeds as fp32's),
  decoded by the codebook and judged by the demo's Melception: class match (the classifier's top-1 is the
  clip's class) and FID against the real validation mels, beside fp32's own, and FID against fp32's samples.
The sets are small (the demo's validation clips x SAMPLES_PER_CLIP): read FID as a rough comparison between
the rows, not as a paper figure. Skips (with the command that makes them) when the demo's models are missing.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from pipeline.bench.copies import bench_copy
from pipeline.bench.measure import load_line
from pipeline.build.classifier import FEATURES, load_melception
from pipeline.config.presets import compose_stage
from pipeline.data.datasets import ConditionedDataset, batch_condition
from pipeline.demo.chain import demo_request
from pipeline.evaluate.metrics import fid
from pipeline.evaluate.model_checks import load_real_mels
from pipeline.generate.loading import features_config, load_model, sampling_settings
from pipeline.generate.sampling import sample
from pipeline.runs.folders import checkpoint_path

SAMPLES_PER_CLIP = 2 if os.environ.get("BENCH_QUICK", "") not in ("", "0") else 4  # BENCH_QUICK: 2
VARIANTS = {"fp32 (exact)": None, "bf16, fused qkv": {"dtype": torch.bfloat16, "fuse_qkv": True},
            "int8 dynamic (per row), fused qkv": {"int8": True, "fuse_qkv": True}}


def _config():
    """The sample stage's config on the demo's folder, reading the demo chain's transformer (pipeline/demo/chain.py);
    and the demo chain's run folder."""
    demo = demo_request()
    transformer = checkpoint_path(demo.run_dir / "train_transformer", demo.cfg["transformer_checkpoint"])
    dataset = [o for o in demo.overrides if o.startswith("dataset")]
    return compose_stage("sample", [*dataset, f"transformer.ckpt={transformer}"]), demo.run_dir


def main() -> list[str]:

    torch.set_num_threads(1)  # agreement, not speed: tiny models run fastest on one thread of a shared machine
    cfg, run = _config()
    classifier_path = checkpoint_path(run / "train_classifier")
    device = torch.device("cpu")
    missing = [str(p) for p in (classifier_path, Path(str(cfg.dataset.clips))) if not p.exists()]
    try:
        model, meta = load_model(cfg, device)
    except FileNotFoundError as e:
        missing.append(str(e).split(":")[0])
    if missing:
        print(f"SKIPPED: the demo's trained models are missing ({'; '.join(missing)}): run `make demo` first "
              f"(or point SPECVQGAN_OUTPUTS at an outputs folder that holds them)")
        return ["SKIPPED: no demo models (make demo)"]
    args = meta["model_args"]
    settings = sampling_settings(cfg, meta).options()
    grid = (model.first_stage_permuter.H, model.first_stage_permuter.W)
    ds = ConditionedDataset(cfg.dataset, features_config(cfg, meta), str(cfg.split),
                            int(args.get("feat_sample_size") or 1), condition=str(args.get("condition", "features")))
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    cond = batch_condition(batch, str(args.get("condition", "features")), device)
    targets = np.asarray(ds.targets)
    classifier, normalize, _ = load_melception(str(classifier_path), None, device)
    print(f"demo models from {run} (transformer {meta['path']}), {len(ds)} {cfg.split} clips, grid {grid}, "
          f"top_k {settings['top_k']}, {SAMPLES_PER_CLIP} samples per clip; {torch.get_num_threads()} thread(s); "
          f"{load_line()}")

    @torch.no_grad()
    def judge(mels: torch.Tensor) -> dict[str, np.ndarray]:
        feats = classifier.features(normalize(mels, zero_one=True), FEATURES)
        return {n: feats[n].double().numpy() for n in FEATURES}

    reals = judge(torch.from_numpy(load_real_mels(cfg.dataset, ds.ids, int(cfg.clip.crop_len))).float())
    gpt = model.transformer
    fp32_greedy = sample(gpt, cond, greedy=True, grid=grid)
    with torch.inference_mode():
        S = gpt.condition_length(cond)
        fp32_logits = gpt(fp32_greedy[:, :-1], cond)[:, S - 1:]
        fp32_forced = fp32_logits.argmax(-1)
    top2 = fp32_logits.topk(2, dim=-1).values
    margin = (top2[..., 0] - top2[..., 1]) / fp32_logits.std(-1)
    print(f"how much the agreement says: fp32's greedy tokens use {len(fp32_greedy.unique())} of {args['vocab_size']} "
          f"codes; its top-1 logit leads the second by {margin.median():.2f} logit std (median; "
          f"{100 * (margin < 0.05).float().mean():.0f}% of positions under 0.05, where rounding can flip the argmax)")
    fp32_fakes, summary = None, []
    for name, kwargs in VARIANTS.items():
        variant = gpt if kwargs is None else bench_copy(model, **kwargs)
        greedy = sample(variant, cond, greedy=True, grid=grid)
        with torch.inference_mode():
            forced = variant(fp32_greedy[:, :-1], cond.to(variant.pos_emb.dtype))[:, S - 1:].float().argmax(-1)
        differ = greedy != fp32_greedy
        first = torch.where(differ.any(1), differ.float().argmax(1), torch.tensor(greedy.shape[1])).float()
        mels = []
        for k in range(SAMPLES_PER_CLIP):
            gen = torch.Generator().manual_seed(1000 + k)
            tokens = sample(variant, cond, num_tokens=greedy.shape[1], grid=grid, generator=gen, **settings)
            mels.append(((model.decode_to_spec(tokens)[:, 0].float() + 1) / 2))
        fakes = judge(torch.cat(mels))
        match = float((fakes["logits"].argmax(1) == np.tile(targets, SAMPLES_PER_CLIP)).mean())
        fid_real = fid(reals["2048"], fakes["2048"])
        fid_fp32 = 0.0 if fp32_fakes is None else fid(fp32_fakes["2048"], fakes["2048"])
        fp32_fakes = fakes if fp32_fakes is None else fp32_fakes
        print(f"{name:>34}: greedy tokens equal to fp32 {100 * (~differ).float().mean():.0f}% (first difference "
              f"at token {first.mean():.0f} of {greedy.shape[1]} on average), teacher-forced argmax agreement "
              f"{100 * (forced == fp32_forced).float().mean():.0f}%; samples: class match {100 * match:.0f}% "
              f"(chance {100 / fakes['logits'].shape[1]:.0f}%), FID vs real {fid_real:.1f}, FID vs fp32's samples "
              f"{fid_fp32:.1f}")
        summary.append(f"{name}: greedy {100 * (~differ).float().mean():.0f}% equal, class match {100 * match:.0f}%, "
                       f"FID {fid_real:.1f} vs real")
    print(f"(FID over {len(ds) * SAMPLES_PER_CLIP} samples and {len(ds)} real clips: compare the rows, do not read "
          f"them as paper figures; FID of fp32's samples against themselves is 0 by definition)")
    return summary


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "disabled")
    main()
