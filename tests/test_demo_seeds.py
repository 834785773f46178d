"""`make demo-seeds`: one record per seed from its metrics.json, and the worst seed beside every target."""
from __future__ import annotations

from pipeline.demo.demo_seeds import TARGETS, record, worst_table


def metrics(class_match: float, level_db: float, l1_ratio: float = 0.3) -> dict:
    """A metrics.json as the evaluate stage writes it, with only what the records read."""
    return {"class_match_rate": class_match, "shuffled_class_match_rate": 0.25, "num_fakes": 36,
            "real_class_match_rate": 1.0,
            "synchrony": {"samples": {"rate": 0.8}, "shuffled": {"rate": 0.2}, "real": {"rate": 1.0}},
            "codebook": {"l1_ratio": l1_ratio, "codes_used": 20, "codes_used_share": 0.625, "gan_steps": 200},
            "vocoder": {"identified_share": 1.0, "level_db": level_db},
            "targets": [{"measure": "class match", "met": class_match >= 0.9}, {"measure": "ceiling", "met": None}]}


def test_records_and_the_worst_seed_per_target():
    took = {"wall_s": 500.0, "cpu_s": 700.0, "load": [1.0, 2.5]}
    records = [record(0, metrics(0.95, -1.0), took), record(1, metrics(0.86, 2.0, 0.45), took),
               record(2, metrics(0.97, -2.5), took)]
    assert records[1]["seed"] == 1 and records[1]["class_match"] == 0.86 and records[1]["synchrony_shuffled"] == 0.2
    assert records[0]["targets_met"] and not records[1]["targets_met"] and records[1]["targets_missed"] == ["class match"]
    assert {"codebook_l1_ratio", "codes_used", "vocoder_level_db", "class_match_shuffled"} <= set(records[0])
    lines = {line.split("  ")[0]: line for line in worst_table(records).splitlines()}
    assert "0.860 (1)" in lines["class match of generated samples"] and lines["class match of generated samples"
                                                                               ].endswith("NO")
    assert "0.450 (1)" in lines["codebook L1 / the mean spectrogram's"]  # higher is worse
    assert "2.500 (2)" in lines["vocoder level against the real audio (|dB|)"]  # the loudest deviation, either way
    assert len(lines) == len(TARGETS) + 1


def test_a_missing_measure_is_not_met():
    broken = metrics(0.95, -1.0)
    broken["vocoder"] = {"skipped": "no vocoder checkpoint"}
    table = worst_table([record(0, metrics(0.95, -1.0), {"wall_s": 1, "cpu_s": 1}),
                         record(1, broken, {"wall_s": 1, "cpu_s": 1})])
    assert any(line.startswith("vocoder level") and "missing" in line and line.endswith("NO")
               for line in table.splitlines())
