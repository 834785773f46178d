"""`make demo-seeds`: one record per seed from its metrics.json, and the worst seed beside every target (the targets
are the evaluate stage's own rows)."""
from __future__ import annotations

from pipeline.demo.demo_seeds import record, worst_table
from pipeline.evaluate.model_checks import targets


def metrics(class_match: float, level_db: float, l1: float = 0.3, vocoder: bool = True) -> dict:
    """A metrics.json as the evaluate stage writes it (targets from model_checks.targets)."""
    out = {"chance": 0.25, "class_match_rate": class_match, "shuffled_class_match_rate": 0.25, "num_fakes": 36,
           "real_class_match_rate": 1.0,
           "synchrony": {"samples": {"rate": 0.8}, "shuffled": {"rate": 0.2}, "real": {"rate": 1.0}},
           "codebook": {"l1": l1, "mean_spectrogram_l1": 1.0, "codes_used": 20, "codes_used_share": 0.625,
                        "n_embed": 32, "gan_steps": 200, "trained_steps": 400},
           "vocoder": {"identified_share": 1.0, "chance": 1 / 36, "clips": 36, "mel_l1": 0.04,
                       "griffinlim_mel_l1": 0.01, "level_db": level_db, "griffinlim_level_db": -0.5}
           if vocoder else {"skipped": "no vocoder checkpoint"}}
    out["targets"] = targets(out, 32)
    return out


def lines(table: str) -> dict[str, str]:
    return {line.split("  ")[0]: line for line in table.splitlines()}


def test_records_and_the_worst_seed_per_target():
    took = {"wall_s": 500.0, "cpu_s": 700.0, "load": [1.0, 2.5]}
    records = [record(0, metrics(0.95, -1.0), took), record(1, metrics(0.86, 2.0, l1=0.45), took),
               record(2, metrics(0.97, -2.5), took)]
    assert records[1]["seed"] == 1 and records[1]["class_match"] == 0.86 and records[1]["synchrony_shuffled"] == 0.2
    assert records[1]["codebook_l1_ratio"] == 0.45 and records[0]["codes_used"] == 20
    assert records[0]["targets_met"] and not records[1]["targets_met"]
    assert records[1]["targets_missed"] == ["class match of generated samples (36 samples)"]
    table, met = worst_table(records)
    rows = lines(table)
    assert not met
    assert "0.860 (1)" in rows["class_match"] and rows["class_match"].endswith("NO")
    assert "0.450 (1)" in rows["codebook_l1"] and rows["codebook_l1"].endswith("yes")  # lower is better
    assert "-2.500 (2)" in rows["vocoder_level"]  # the furthest from 0 dB, either way
    assert "vocoder_mel_l1" not in rows  # a reference, not a target


def test_every_seed_meeting_every_target_is_met_and_a_missing_measure_is_not():
    took = {"wall_s": 1.0, "cpu_s": 1.0}
    assert worst_table([record(s, metrics(0.95, -1.0), took) for s in range(3)])[1]
    table, met = worst_table([record(0, metrics(0.95, -1.0), took), record(1, metrics(0.95, -1.0, vocoder=False),
                                                                          took)])
    assert not met and lines(table)["vocoder_level"].endswith("NO") and "missing" in lines(table)["vocoder_level"]
