"""The zoo: the registry against the ground truth (the spec's README tables, the original's md5 files), and the
released models used by name end to end against a real HTTP server on 127.0.0.1: `stages.sample video=...
model=<fixture entry>` from download to mp4, the backbone-weights error, `stages.codec` and `stages.evaluate` by
name, and one row of table (c) from the released-layout fixtures with `stages.paper_table`."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from pipeline.checkpoints.zoo import REGISTRY, Zoo
from tests.helpers import ROOT, SHARED, compose, hydra_conf, write_clip
from tests.zoo_server import SHARED_RELEASED, FileServer, tar_gz

TRANSFORMER_RUN = "2021-01-01T00-00-01_vas_transformer"
CODEBOOK_RUN = "2021-01-01T00-00-00_vas_codebook"
STATS = SHARED / "data" / "normalization" / "train_means_stds_melspec_10s_22050hz.txt"
VIDEO = SHARED / "data" / "vas" / "videos" / "dog" / "video_02677.mp4"   # 6.0 s, real
ENTRY = "fixture_vas_transformer_5feats_rn50"


# ----------------------------------------------------------------------------------------- the registry
def test_registry_has_every_release_with_the_published_md5_and_numbers():
    zoo = Zoo()
    spec = (SHARED / "spec" / "SPECVQGAN.md").read_text()
    by_file = {f: e for e in zoo.entries.values() for f in e.files}
    # the README tables as the spec restates them: "| ... | FID | MKL | [time |] <stamp>[_name] / <md5> |"
    rows = [[c.strip().strip("`") for c in line.strip().strip("|").split("|")] for line in spec.splitlines()
            if re.search(r"\| `?\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\S* / [0-9a-f]{32} \|$", line)]
    assert len(rows) == 26                                   # 2 codebooks + 3 x 7 transformers + 3 class-conditioned
    for cells in rows:
        run, md5 = cells[-1].replace("`", "").split(" / ")
        stamp = run[:19]
        (entry,) = [e for f, e in by_file.items() if f.startswith(f"models/{stamp}_")]
        assert entry.md5[entry.files[0]] == md5 and (run == stamp or entry.files[0] == f"models/{run}.tar.gz")
        paper = entry.info["paper"]
        if entry.kind == "codebook":
            assert (paper["fid"], paper["mkl"]) == (float(cells[-3]), float(cells[-2]))
        else:
            assert [paper["fid"], paper["mkl"], paper["time"]] == [float(c.rstrip("*")) for c in cells[-4:-1]]
            assert ("samples_per_clip" in paper) == cells[-4].endswith("*")   # the starred rows
    kinds = [e.kind for e in zoo.entries.values()]
    assert kinds.count("transformer") == 24 and kinds.count("codebook") == 2
    assert sum(e.info.get("condition") == "class" for e in zoo.entries.values()) == 3
    for setting in "abc":
        assert sum(setting in e.settings for e in zoo.entries.values() if e.kind == "transformer") == 8
    # the data archives: every line of the original's md5 files, as the download scripts name them
    for md5_file, prefix in (("md5sum_vas.md5", "vas/"), ("md5sum_vggsound.md5", "vggsound/")):
        lines = (SHARED / "data" / md5_file).read_text().split("\n")
        pairs = [line.split() for line in lines if line.strip()]
        for md5, path in pairs:
            entry = by_file[prefix + path.split("/")[-1]]
            assert entry.kind == "data" and entry.md5[prefix + path.split("/")[-1]] == md5
        assert sum(e.info.get("dataset") == prefix[:-1] for e in zoo.entries.values()) == len(pairs)
    for name in ("melception", "vggishish", "vggsound_mel_stats", "melgan", "melgan_train"):
        assert name in zoo
    assert zoo.get("vggsound_mel_stats").md5["train_means_stds_melspec_10s_22050hz.txt"] == \
        __import__("hashlib").md5(STATS.read_bytes()).hexdigest()
    assert zoo.url(zoo.get("vas_transformer_212feats_bn"), zoo.get("vas_transformer_212feats_bn").files[0]) == (
        "https://a3s.fi/swift/v1/AUTH_a235c0f452d648828f745589cde1219a/specvqgan_public/models/"
        "2021-06-09T15-17-18_vas_transformer.tar.gz")
    assert len(yaml.safe_load(REGISTRY.read_text())["hosts"]) == 2          # one base per host


def test_paper_settings_of_a_row():
    from pipeline.evaluate.paper_table import pick_rows, row_settings

    zoo = Zoo()
    (row,) = pick_rows(zoo, "c", ["212feats_bn"])
    assert row.name == "vas_transformer_212feats_bn"
    assert row_settings(zoo, row) == {"dataset": "vas", "split": "valid", "samples_per_clip": 100, "top_k": 64,
                                      "batch_size": 4}
    (starred,) = pick_rows(zoo, "a", ["1feat_rn50"])
    assert row_settings(zoo, starred)["samples_per_clip"] == 1 and row_settings(zoo, starred)["top_k"] == 512
    assert [e.name for e in pick_rows(zoo, "b", ["nofeats"])] == ["vas_transformer_nofeats_vggsound_codebook"]
    assert len(pick_rows(zoo, "class", "all")) == 3 and len(pick_rows(zoo, "a", "all")) == 7
    with pytest.raises(ValueError, match="names more than one row of table c"):
        pick_rows(zoo, "c", ["bn"])


# ------------------------------------------------------------------------------------ served fixtures
def _calibrate_batch_norm(model) -> None:
    """Running BN statistics from the real VAS mels, so a random Melception's features tell clips apart."""
    from pipeline.data.normalization import Normalize, read_stats

    mels = [np.load(p)[:, 6:854] for p in sorted((SHARED / "data" / "vas" / "features").glob("*/melspec*/*.npy"))]
    x = Normalize(*read_stats(STATS))(torch.from_numpy(np.stack(mels)).float(), zero_one=True)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a cumulative average over the batches below
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server with the released-layout fixtures (tarred as the release names them), a tiny Melception in the
    released .pt layout, the real normalisation stats; and a registry naming them."""
    tmp = tmp_path_factory.mktemp("served")
    server = FileServer().start()
    from models.melception import Melception

    torch.manual_seed(0)
    melception = Melception(num_classes=309, width=0.0625)
    _calibrate_batch_norm(melception)
    released = {"loss": 1.0, "metrics": {"accuracy": 0.1}, "epoch": 3, "optimizer": {},
                "model": melception.state_dict()}
    torch.save(released, tmp / "melception.pt")
    registry = yaml.safe_load(REGISTRY.read_text())
    registry["hosts"] = {"a3s": server.url}
    registry["tables"]["c"]["top_k"] = 16  # the paper's 64 is beyond the fixture codebook's 16 codes: refused
    registry["models"] = {
        ENTRY: {"kind": "transformer", "about": "the released-layout fixture transformer (5 frames, 2048-d)",
                "file": f"models/{TRANSFORMER_RUN}.tar.gz",
                "md5": server.add(f"models/{TRANSFORMER_RUN}.tar.gz", tar_gz(SHARED_RELEASED / TRANSFORMER_RUN)),
                "setting": "c", "condition": "features", "frames": 5, "features": "resnet50",
                "paper": {"fid": 20.9, "mkl": 6.1, "time": 7.8, "samples_per_clip": 10}},
        "fixture_vas_codebook": {"kind": "codebook", "file": f"models/{CODEBOOK_RUN}.tar.gz",
                                 "md5": server.add(f"models/{CODEBOOK_RUN}.tar.gz",
                                                   tar_gz(SHARED_RELEASED / CODEBOOK_RUN))},
        "melception": {"kind": "classifier", "file": "melception-21-05-10T09-28-40.pt",
                       "md5": server.add("melception-21-05-10T09-28-40.pt", (tmp / "melception.pt").read_bytes())},
        "vggsound_mel_stats": dict(registry["models"]["vggsound_mel_stats"]),   # the real md5 of the real file
    }
    server.add("train_means_stds_melspec_10s_22050hz.txt", STATS.read_bytes())
    registry.pop("data")
    path = tmp / "registry.yaml"
    path.write_text(yaml.safe_dump(registry))
    yield {"server": server, "registry": path}
    server.stop()


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "SPECVQGAN_OUTPUTS": str(tmp_path / "outputs"), "SPECVQGAN_MODELS": str(tmp_path / "models"),
            "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_sample_a_video_with_a_released_model_by_name_from_download_to_mp4(served, tmp_path, original_fixtures):
    import av


    video = write_clip(tmp_path / "in" / "clip.mp4", 1.5)   # short: full-width ResNet50 costs ~0.4 s a frame here
    args = [sys.executable, "-m", "stages.sample", "dataset=vas", "logger=none", "device=cpu", f"video={video}",
            f"model={ENTRY}", f"zoo.registry={served['registry']}", "feature_weights=random",
            f"vocoder.ckpt={original_fixtures / 'melgan_netG_small.pt'}"]
    result = subprocess.run(args, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert f"[zoo] {ENTRY} is not in" in result.stdout                        # fetched on the way
    assert (tmp_path / "models" / TRANSFORMER_RUN / "checkpoints" / "epoch_000.ckpt").is_file()
    (wav,) = (tmp_path / "outputs" / "sample" / "vas").rglob("clip_sample_0.wav")
    assert f"model-{ENTRY}" in wav.parent.name                                 # the run folder names the model
    wave, sr = sf.read(wav)
    assert sr == 22050 and abs(len(wave) / sr - 1.5) < 0.05 and np.abs(wave).max() > 0
    with av.open(str(wav.with_suffix(".mp4"))) as container:
        assert container.streams.video and container.streams.audio

    requests = len(served["server"].requests)
    again = subprocess.run(args, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[zoo]" not in again.stdout and len(served["server"].requests) == requests   # nothing fetched again


def _sample_cfg(served, tmp_path, *overrides):
    return compose("sample", "dataset=vas", "logger=none", "device=cpu", f"paths.models={tmp_path / 'models'}",
                   f"zoo.registry={served['registry']}", *overrides)


def test_without_backbone_weights_the_error_names_the_key_and_the_source(served, tmp_path):
    from pipeline.generate.sample import run

    cfg = _sample_cfg(served, tmp_path, f"video={VIDEO}", f"model={ENTRY}")
    with pytest.raises(ValueError, match=r"trained on resnet50 features .*pass feature_weights=PATH.*"
                                         r"https://download.pytorch.org/models/"):
        run(cfg, run_dir=tmp_path / "run")


def test_offline_the_error_names_the_download_command(served, tmp_path):
    from pipeline.checkpoints.zoo import ZooError
    from pipeline.generate.sample import run

    cfg = _sample_cfg(served, tmp_path, f"video={VIDEO}", f"model={ENTRY}", "zoo.fetch=false")
    with pytest.raises(ZooError, match=rf"{ENTRY} is not downloaded .*`python -m stages.download what={ENTRY}`"):
        run(cfg, run_dir=tmp_path / "run")


def test_codec_by_released_name(served, tmp_path):
    from pipeline.codec.codec import run

    cfg = compose("codec", "mode=encode", f"input={VIDEO}", f"output={tmp_path / 'clip.svqc'}",
                  "codebook.ckpt=fixture_vas_codebook", f"paths.models={tmp_path / 'models'}",
                  f"zoo.registry={served['registry']}", "device=cpu")
    (report,) = run(cfg, run_dir=tmp_path / "run")
    assert (tmp_path / "clip.svqc").is_file() and report.bits_per_code == 4       # 16 codes
    assert (tmp_path / "models" / CODEBOOK_RUN / "checkpoints" / "epoch_000.ckpt").is_file()


@pytest.fixture
def vas_valid(tmp_path, vas_dir) -> Path:
    """A VAS data root whose validation split is the shared real clips (mels and features as the original's)."""
    data = tmp_path / "data"
    (data / "vas").mkdir(parents=True)
    (data / "vas" / "features").symlink_to(vas_dir / "features")
    rows = sorted(f"{p.parent.parent.name}/{p.name[:-len('_mel.npy')]}"
                  for p in (vas_dir / "features").glob("*/melspec_10s_22050hz/*_mel.npy"))
    for split in ("valid", "train"):  # train: the evaluate stage's training-mean baseline reads it
        (data / f"vas_{split}.txt").write_text("\n".join(rows) + "\n")
    return data


@pytest.mark.slow
def test_one_row_of_table_c_from_the_released_fixtures(served, tmp_path, vas_valid):
    from pipeline.evaluate.paper_table import run

    cfg = compose(
        "paper_table", "table=c", f"rows=[{ENTRY}]", "samples_per_clip=2", "device=cpu", "logger=none",
        f"paths.models={tmp_path / 'models'}", f"paths.data={vas_valid}", f"paths.outputs={tmp_path / 'out'}",
        f"zoo.registry={served['registry']}", "eval_batch_size=8", "degenerate_metrics=compute")
    with hydra_conf():  # the table composes each row's sample and evaluate configs
        result = run(cfg)
    row = result["results"][ENTRY]
    assert row["num_fakes"] == 2 * 10 and row["num_reals"] == 10 and row["top_k"] == 16
    assert np.isfinite(row["fid"]) and row["fid"] > 0 and np.isfinite(row["mkl"]) and row["mkl"] >= 0
    assert row["seconds_per_sample"] > 0
    text = result["markdown"].read_text()
    line = next(line for line in text.splitlines() if line.startswith(f"| {ENTRY} "))
    assert f"| 5 Feats | ResNet50 | 2 | 20.9* | {row['fid']:.2f} | 6.1* | {row['mkl']:.2f} | 7.8 |" in line
    samples = Path(row["samples_dir"])
    assert len(list(samples.glob("cls_*/*_sample_*.npy"))) == 20 and (samples / "metrics.json").is_file()


@pytest.mark.slow
def test_paper_table_lists_its_tables_and_offline_ends_with_the_download_hint(served, tmp_path, vas_valid):
    """Without `table=` (and with --help) the tables and their rows are listed; offline the stage ends with the
    one-line hint to run stages.download where the internet can be reached, no traceback, no empty .part."""
    import subprocess
    import sys

    from tests.helpers import ROOT

    offline = tmp_path / "offline.yaml"
    registry = yaml.safe_load(served["registry"].read_text())
    registry["hosts"] = {"a3s": "http://127.0.0.1:9"}  # nothing listens there: as without a network
    offline.write_text(yaml.safe_dump(registry))

    def stage(*overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stages.paper_table", "logger=none", "device=cpu",
                               f"zoo.registry={offline}", f"paths.data={vas_valid}", *overrides], cwd=ROOT,
                              env=_env(tmp_path), capture_output=True, text=True, timeout=300, check=False)

    bare = stage()
    assert bare.returncode == 2 and "which table? Pass table=TABLE" in bare.stderr, bare.stderr[-2000:]
    assert f"c: VAS transformer, VAS codebook\n     rows: {ENTRY.split('transformer_', 1)[-1]}" in bare.stderr
    helped = stage("--help")
    assert helped.returncode == 0 and "tables and their rows:" in helped.stdout and "rows:" in helped.stdout
    result = stage("table=c", f"rows=[{ENTRY}]", "samples_per_clip=1")
    assert result.returncode == 1, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and f"could not fetch {ENTRY}" in result.stderr, result.stderr[-3000:]
    assert lines[-1].startswith(f"  Run `python -m stages.download what={ENTRY}` where the internet can be reached")
    assert not [p for p in (tmp_path / "models").rglob("*.part")]


def test_train_transformer_takes_a_released_codebook_by_name(served, tmp_path):
    from pipeline.train.train_transformer import preflight

    cfg = compose(
        "train_transformer", "dataset=vas", "codebook.ckpt=fixture_vas_codebook",
        f"paths.models={tmp_path / 'models'}", f"zoo.registry={served['registry']}")
    codebook = preflight(cfg, run_dir=None)
    assert int(codebook.n_embed) == 16
    assert (tmp_path / "models" / CODEBOOK_RUN / "configs" / "2021-01-01T00-00-00-project.yaml").is_file()


def test_an_original_log_folder_by_path_brings_its_backbone(original_fixtures):
    from pipeline.checkpoints.zoo import released_meta

    folder = SHARED_RELEASED / TRANSFORMER_RUN
    meta = released_meta(folder)                       # its project yaml names BN-Inception RGB + flow folders
    assert meta["zoo"] is None and meta["features"]["name"] == "bninception" and meta["features"]["depth"] == 2048
    assert released_meta(folder / "checkpoints" / "epoch_000.ckpt")["features"]["name"] == "bninception"
    assert released_meta(original_fixtures / "transformer_small.ckpt") == {"features": None, "zoo": None}


def test_a_released_transformer_by_name_starts_a_fine_tuning_run_when_it_fits(served, tmp_path):
    """`transformer.init_from=<released name>`: fetched, checked against the data's features and the codebook, and the
    new run's GPT starts from its weights; with another network's features the run is refused before any work."""
    from pipeline.build.transformer import load_transformer
    from pipeline.train.init_from import SourceMismatch
    from pipeline.train.train_transformer import TransformerTask

    overrides = ["dataset=vas", "codebook.ckpt=fixture_vas_codebook", f"transformer.init_from={ENTRY}",
                 "transformer.feat_sample_size=5", "transformer.n_layer=2", "transformer.n_head=2",
                 "transformer.n_embd=64", f"paths.models={tmp_path / 'models'}", f"zoo.registry={served['registry']}"]
    task = TransformerTask(compose("train_transformer", *overrides, "features=resnet50"))
    task.preflight(tmp_path / "run")
    want = load_transformer(tmp_path / "models" / TRANSFORMER_RUN).transformer.state_dict()
    assert set(task.source.state_dict) == {f"transformer.{k}" for k in want}
    for key, value in want.items():
        torch.testing.assert_close(task.source.state_dict[f"transformer.{key}"], value, rtol=0, atol=0)

    other = TransformerTask(compose("train_transformer", *overrides, "features=efficientnet_lite0"))
    with pytest.raises(SourceMismatch, match=r"the source reads 2048-wide resnet50 features, this data set has "
                                             r"1280-wide efficientnet_lite0 features: extract `features=resnet50`"):
        other.preflight(tmp_path / "run")
