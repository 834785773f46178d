"""The original's released files, loaded as they are: the Lightning 1.2.10 log folders in
../shared/fixtures/original/released/, MelGAN's vocoder/logs/vggsound/ and the classifiers' .pt files (built here in
the released layout), with every weight unchanged, the original's outputs reproduced, and tampered files refused
with nothing run."""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from models.vggishish import VGGishish
from pipeline.build.classifier import load_classifier
from pipeline.build.codebook import load_codebook
from pipeline.build.transformer import load_transformer
from pipeline.build.vocoder import load_vocoder
from pipeline.checkpoints.reading import UnsafeCheckpointError, read_checkpoint
from pipeline.checkpoints.zoo import locate
from pipeline.generate.sampling import sample
from tests.helpers import SMALL_VGG, fast_melception

CODEBOOK = "2021-01-01T00-00-00_vas_codebook"
TRANSFORMER = "2021-01-01T00-00-01_vas_transformer"
STATS = "train_means_stds_melspec_10s_22050hz.txt"


@pytest.fixture(scope="module")
def released(original_fixtures) -> Path:
    return original_fixtures / "released"


def _copy_tree(src: Path, dst: Path) -> Path:
    """A writable copy (the shared fixtures are read-only)."""
    for file in src.rglob("*"):
        if file.is_file():
            (dst / file.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, dst / file.relative_to(src))
    return dst


def _assert_same_tensors(ours: dict, reference: dict) -> None:
    assert set(ours) == set(reference)
    different = [k for k in reference if not torch.equal(ours[k], reference[k])]
    assert not different, different


# ----------------------------------------------------------------------------------------------- codebook
@pytest.mark.parametrize("which", ["folder", "file"])
def test_released_codebook_loads_unchanged_and_reproduces_the_original(released, original_fixtures, which):
    folder = released / CODEBOOK
    model = load_codebook(folder if which == "folder" else folder / "checkpoints" / "epoch_000.ckpt")
    assert not model.training and model.loss is None
    reference = torch.load(original_fixtures / "codebook_small.ckpt", weights_only=True)["state_dict"]
    _assert_same_tensors(model.state_dict(), {k: v for k, v in reference.items() if not k.startswith("loss.")})
    # the sizes come from the project YAML, not from guesses
    cfg = yaml.safe_load((folder / "configs" / "2021-01-01T00-00-00-project.yaml").read_text())["model"]["params"]
    assert {k: v for k, v in model.model_args["ddconfig"].items() if k != "norm_groups"} == cfg["ddconfig"]
    assert (model.n_embed, model.embed_dim) == (cfg["n_embed"], cfg["embed_dim"])
    io = torch.load(original_fixtures / "codebook_small_io.pt", weights_only=True)
    with torch.no_grad():
        h = model.quant_conv(model.encoder(io["x"]))
        quant, _, (_, _, indices) = model.quantize(h)
        xrec = model.decode(quant)
    torch.testing.assert_close(h, io["h"], rtol=1e-5, atol=1e-5)
    assert torch.equal(indices.view(2, 5, 13), io["indices"])
    # float32 from another build of the same kernels: the fixtures' README asks for ~1e-4 relative
    assert (xrec - io["xrec"]).abs().max() <= 1e-4 * io["xrec"].abs().max()


def test_released_codebook_with_its_loss(released, original_fixtures):
    model = load_codebook(released / CODEBOOK, with_loss=True)
    reference = torch.load(original_fixtures / "codebook_small.ckpt", weights_only=True)["state_dict"]
    _assert_same_tensors(model.state_dict(), reference)
    # lossconfig.params of the YAML; the weights say there is no LPAPS in this small release
    assert model.loss.discriminator_iter_start == 2001 and model.loss.perceptual_weight == 0
    assert model.loss.config["disc_weight"] == 0.8 and model.loss.config["disc_ndf"] == 16


# -------------------------------------------------------------------------------------------- transformer
@pytest.mark.parametrize("which", ["folder", "file"])
def test_released_transformer_loads_unchanged_and_reproduces_the_original(released, original_fixtures, which):
    folder = released / TRANSFORMER
    model = load_transformer(folder if which == "folder" else folder / "checkpoints" / "epoch_000.ckpt")
    assert not model.training
    reference = torch.load(original_fixtures / "transformer_small.ckpt", weights_only=True)["state_dict"]
    _assert_same_tensors(model.state_dict(), reference)  # the codebook too: first_stage_model.* from the same file
    args = model.model_args
    assert (args["n_head"], args["block_size"], args["vocab_size"], args["feat_sample_size"]) == (2, 270, 16, 5)
    assert args["condition"] == "features" and args["feat_depth"] == 2048 and args["grid"] == [5, 53]
    assert model.first_stage_model.model_args["ddconfig"]["attn_resolutions"] == [53]
    io = torch.load(original_fixtures / "transformer_small_io.pt", weights_only=True)
    with torch.no_grad():
        logits = model.transformer(io["tokens"], io["features"])
    torch.testing.assert_close(logits, io["logits"], rtol=1e-4, atol=1e-4)
    assert torch.equal(sample(model.transformer, io["features"], greedy=True), io["greedy_tokens"])


def test_n_head_comes_from_the_project_yaml(released, original_fixtures, tmp_path):
    folder = _copy_tree(released / TRANSFORMER, tmp_path / TRANSFORMER)
    with pytest.raises(ValueError, match="n_head=4 was passed but .* n_head 2"):
        load_transformer(folder, n_head=4)
    yml = folder / "configs" / "2021-01-01T00-00-01-project.yaml"
    yml.write_text(yml.read_text().replace("n_head: 2", "n_head: 4"))
    model = load_transformer(folder)  # n_head is invisible in the weights: the YAML alone sets it
    assert model.model_args["n_head"] == 4
    io = torch.load(original_fixtures / "transformer_small_io.pt", weights_only=True)
    with torch.no_grad():
        assert not torch.allclose(model.transformer(io["tokens"], io["features"]), io["logits"], atol=1e-3)


def test_a_yaml_that_contradicts_the_weights_is_refused(released, tmp_path):
    folder = _copy_tree(released / TRANSFORMER, tmp_path / TRANSFORMER)
    yml = folder / "configs" / "2021-01-01T00-00-01-project.yaml"
    yml.write_text(yml.read_text().replace("feat_sample_size: 5", "feat_sample_size: 212"))
    with pytest.raises(ValueError, match="feat_sample_size 5 in the weights vs 212 in the config"):
        load_transformer(folder)
    with pytest.raises(ValueError, match="load_codebook"):
        load_transformer(released / CODEBOOK)
    with pytest.raises(ValueError, match="load_transformer"):
        load_codebook(released / TRANSFORMER)


def test_no_feats_and_class_conditioned_folders(released, original_fixtures, tmp_path):
    from pipeline.build.transformer import build_transformer

    folder = _copy_tree(released / TRANSFORMER, tmp_path / "no_feats")
    yml = folder / "configs" / "2021-01-01T00-00-01-project.yaml"
    depth = "    feat_depth: 2048\n"
    yml.write_text(yml.read_text().replace(depth, depth + "    replace_feats_with_random: true\n"))
    assert load_transformer(folder).model_args["condition"] == "none"  # "No Feats": GPTFeats on random features

    # a class-conditioned run (GPTClass, ClassOnlyStage) in the same layout; its embedder config is not in the
    # YAML (the original never shipped one), so the class count comes from the weights
    cfg = yaml.safe_load(yml.read_text())
    params = cfg["model"]["params"]
    params["cond_stage_key"] = "target"
    params["transformer_config"] = {"target": "specvqgan.modules.transformer.mingpt.GPTClass",
                                    "params": {"GPT_config": {**params["transformer_config"]["params"]["GPT_config"],
                                                              "block_size": 266}}}
    params["cond_stage_config"] = {"target": "specvqgan.modules.misc.class_cond.ClassOnlyStage"}
    del cfg["data"]["params"]["feat_sampler_cfg"]
    embedded = load_transformer(released / TRANSFORMER).first_stage_model
    args = {"condition": "class", "vocab_size": 16, "block_size": 266, "n_layer": 2, "n_head": 2, "n_embd": 64,
            "n_classes": 8, "grid": [5, 53]}
    torch.manual_seed(0)
    model = build_transformer(args, embedded)
    run = tmp_path / "2021-01-02T00-00-00_vas_transformer"
    (run / "checkpoints").mkdir(parents=True)
    (run / "configs").mkdir()
    (run / "configs" / "2021-01-02T00-00-00-project.yaml").write_text(yaml.safe_dump(cfg))
    torch.save({"epoch": 3, "global_step": 40, "pytorch-lightning_version": "1.2.10", "callbacks": {},
                "optimizer_states": [], "lr_schedulers": [], "state_dict": model.state_dict()},
               run / "checkpoints" / "epoch_003.ckpt")
    loaded = load_transformer(run)
    assert loaded.model_args["condition"] == "class" and loaded.model_args["n_classes"] == 8
    _assert_same_tensors(loaded.state_dict(), model.state_dict())


def test_the_folder_picks_the_checkpoint_as_the_original(released, tmp_path):
    folder = _copy_tree(released / TRANSFORMER, tmp_path / TRANSFORMER)
    ckpts = folder / "checkpoints"
    (ckpts / "epoch_000.ckpt").rename(ckpts / "epoch_003.ckpt")
    (ckpts / "epoch_001.ckpt").write_bytes(b"not a checkpoint")
    load_transformer(folder)  # the last in sorted order: epoch_003
    (ckpts / "last.ckpt").write_bytes(b"truncated")
    with pytest.raises(ValueError, match=r"last\.ckpt"):  # last.ckpt wins when present
        load_transformer(folder)


# --------------------------------------------------------------------------------------- tampered files
def _binunicode(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _payload(module: str, name: str, argument: str) -> bytes:
    """Pickle opcodes that set d["evil"] = module.name(argument) in the dict on top of the stack."""
    return _binunicode("evil") + f"c{module}\n{name}\n".encode() + b"(" + _binunicode(argument) + b"tRs"


def _tamper(src: Path, dst: Path, payload: bytes) -> Path:
    """`src` (a torch zip checkpoint) with `payload` run first thing inside its top-level dict."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                assert data[:5] == b"\x80\x02}q\x00"  # PROTO 2, EMPTY_DICT, BINPUT 0
                data = data[:5] + payload + data[5:]
            zout.writestr(info, data)
    return dst


@pytest.mark.parametrize("module,name,code", [
    (os.system.__module__, "system", "touch {marker}"),  # posix.system: what a pickled os.system names
    ("builtins", "eval", "open(r'{marker}', 'w').close()"),
    ("subprocess", "getoutput", "touch {marker}"),
])
def test_a_tampered_released_checkpoint_is_refused_and_nothing_runs(released, tmp_path, module, name, code):
    marker = tmp_path / "ran"
    payload = _payload(module, name, code.format(marker=marker))
    src = released / TRANSFORMER / "checkpoints" / "epoch_000.ckpt"
    assert read_checkpoint(_tamper(src, tmp_path / "clean.ckpt", b""))["pytorch-lightning_version"] == "1.2.10"
    folder = _copy_tree(released / TRANSFORMER, tmp_path / TRANSFORMER)
    tampered = _tamper(src, folder / "checkpoints" / "epoch_000.ckpt", payload)
    with contextlib.suppress(ImportError):  # the naive way runs the payload, then asks for Lightning
        torch.load(tampered, weights_only=False)
    assert marker.exists()
    marker.unlink()
    for load in (lambda: load_transformer(folder), lambda: load_codebook(folder / "checkpoints" / "epoch_000.ckpt"),
                 lambda: read_checkpoint(folder / "checkpoints" / "epoch_000.ckpt")):
        with pytest.raises(UnsafeCheckpointError, match=rf"refused global\(s\) {module}\.{name}\b.*Nothing was run"):
            load()
        assert not marker.exists()


class _Payload:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_legacy_format_files_are_read_and_tampered_ones_refused(original_fixtures, tmp_path):
    """torch < 1.6 wrote a non-zip format (old MelGAN files): read through the same restricted unpickler."""
    state = torch.load(original_fixtures / "melgan_netG_small.pt", weights_only=True)
    torch.save(state, tmp_path / "best_netG.pt", _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(tmp_path / "best_netG.pt")
    _assert_same_tensors(load_vocoder(tmp_path / "best_netG.pt").state_dict(), load_vocoder(
        original_fixtures / "melgan_netG_small.pt").state_dict())
    marker = tmp_path / "ran"
    torch.save({**state, "hook": _Payload(f"touch {marker}")}, tmp_path / "evil.pt",
               _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match=rf"refused global\(s\) {os.system.__module__}\.system.*Nothing"):
        load_vocoder(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize("how", ["legacy", "raw_pickle"])
def test_every_loader_refuses_a_legacy_or_raw_pickle_checkpoint_as_unsafe(original_fixtures, tmp_path, how):
    """Every loader, the memory-mapped readers of the sample and training stages and the feature networks' weights
    included, gives the same unsafe-file message for torch < 1.6's format and for a bare pickle (before: "mmap can
    only be used with ... the file may be truncated"), and nothing runs."""
    import pickle

    from pipeline.extract.visual import load_model

    marker = tmp_path / "ran"
    state = {**torch.load(original_fixtures / "melgan_netG_small.pt", weights_only=True),
             "hook": _Payload(f"touch {marker}")}
    evil = tmp_path / "evil.pt"
    if how == "legacy":
        torch.save(state, evil, _use_new_zipfile_serialization=False)
    else:
        evil.write_bytes(pickle.dumps(state, protocol=4))
    assert not zipfile.is_zipfile(evil)
    loaders = {"read_checkpoint(mmap)": lambda: read_checkpoint(evil, mmap=True), "read_checkpoint":
               lambda: read_checkpoint(evil), "codebook": lambda: load_codebook(evil), "transformer":
               lambda: load_transformer(evil), "vocoder": lambda: load_vocoder(evil), "classifier":
               lambda: load_classifier(evil), "feature weights": lambda: load_model("resnet50", str(evil))}
    for name, load in loaders.items():
        with pytest.raises(UnsafeCheckpointError, match=rf"evil.pt: refused global\(s\) {os.system.__module__}"
                                                        rf"\.system.*Nothing was run"):
            load()
        assert not marker.exists(), name


def test_unreadable_and_missing_files_name_the_path(tmp_path):
    (tmp_path / "cut.ckpt").write_bytes(b"PK\x03\x04 cut off")
    with pytest.raises(ValueError, match=r"cut\.ckpt.*truncated"):
        read_checkpoint(tmp_path / "cut.ckpt")
    with pytest.raises(FileNotFoundError, match=r"no_such_model does not exist"):
        locate("no_such_model", "transformer")
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        load_transformer(tmp_path / "nothing_here")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="not a transformer folder"):
        load_transformer(tmp_path / "empty_run")


# ------------------------------------------------------------------------------------------------- MelGAN
def _melgan_folder(original_fixtures: Path, root: Path, **overrides) -> Path:
    """vocoder/logs/vggsound/ as released: best_netG.pt and the args.yml that MelGAN's train.py dumps
    (`yaml.dump(argparse.Namespace)`, a Path among the values), for the small fixture generator."""
    folder = root / "vocoder" / "logs" / "vggsound"
    folder.mkdir(parents=True)
    shutil.copyfile(original_fixtures / "melgan_netG_small.pt", folder / "best_netG.pt")
    args = argparse.Namespace(save_path="logs/vggsound", load_path=None, n_mel_channels=80, ngf=8,
                              n_residual_layers=3, ndf=16, num_D=3, n_layers_D=4, downsamp_factor=4, lambda_feat=10.0,
                              cond_disc=False, data_path=Path("/scratch/vggsound/features/melspec_10s_22050hz"),
                              splits_path="data", batch_size=64, seq_len=8192, epochs=3000, log_interval=100,
                              save_interval=1000, n_test_samples=8)
    vars(args).update(overrides)
    (folder / "args.yml").write_text(yaml.dump(args))
    return folder


def test_released_melgan_folder_loads_and_reproduces_the_original(original_fixtures, tmp_path):
    folder = _melgan_folder(original_fixtures, tmp_path)
    assert (folder / "args.yml").read_text().startswith("!!python/object:argparse.Namespace")
    assert "!!python/object/apply:pathlib" in (folder / "args.yml").read_text()
    io = torch.load(original_fixtures / "melgan_small_io.pt", weights_only=True)
    for source in (folder, folder / "best_netG.pt"):
        netG = load_vocoder(source)
        with torch.no_grad():
            torch.testing.assert_close(netG(io["mel"]), io["wav"], rtol=1e-4, atol=1e-5)


def test_melgan_args_yml_is_read_safely(original_fixtures, tmp_path):
    folder = _melgan_folder(original_fixtures, tmp_path / "ngf", ngf=16)
    with pytest.raises(ValueError, match=r"best_netG\.pt does not match the MelGAN generator"):
        load_vocoder(folder)  # args.yml builds the model, as in the original: its ngf must fit the weights
    marker = tmp_path / "ran"
    evil = tmp_path / "evil"
    folder = _melgan_folder(original_fixtures, evil)
    text = (folder / "args.yml").read_text()
    (folder / "args.yml").write_text(text + f"hook: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ValueError, match=r"args\.yml.*refused tag !!python/object/apply:os\.system"):
        load_vocoder(folder)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- classifiers
def _released_training_dict(path: Path, model: torch.nn.Module) -> Path:
    """The original classifiers' {loss, metrics, epoch, optimizer, model} as their numpy-1 era torch.save wrote it:
    numpy scalars in `metrics`, pickled under numpy 1's module name numpy.core.multiarray."""
    metrics = {"mAP": np.float64(0.4758), "accuracy_1": np.float64(0.4449), "mAUC": np.float32(0.9666)}
    optimizer = {"state": {}, "param_groups": [{"lr": 3e-4, "betas": (0.9, 0.999), "params": [0, 1]}]}
    torch.save({"loss": np.float64(2.5), "metrics": metrics, "epoch": 43, "optimizer": optimizer,
                "model": model.state_dict()}, path)
    modern = path.with_suffix(".numpy2")
    path.rename(modern)
    with zipfile.ZipFile(modern) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                assert b"numpy._core.multiarray\nscalar" in data
                data = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
            zout.writestr(info, data)
    modern.unlink()
    return path


def test_released_classifiers_load_with_their_normalisation(shared_dir, tmp_path):
    stats_file = shared_dir / "data" / "normalization" / STATS
    table = np.loadtxt(stats_file, dtype=np.float32)
    melception = fast_melception(9).eval()
    mel_dir = tmp_path / "evaluation" / "logs" / "21-05-10T09-28-40"
    mel_dir.mkdir(parents=True)
    mel_file = _released_training_dict(mel_dir / "melception-21-05-10T09-28-40.pt", melception)
    torch.manual_seed(0)
    vgg = VGGishish(**SMALL_VGG).eval()
    lpaps_dir = tmp_path / "specvqgan" / "modules" / "autoencoder" / "lpaps"  # vggishish16.pt + stats, as shipped
    lpaps_dir.mkdir(parents=True)
    _released_training_dict(lpaps_dir / "vggishish16.pt", vgg)
    shutil.copyfile(stats_file, lpaps_dir / STATS)

    loaded = load_classifier(mel_file, kind="melception", stats=stats_file)
    _assert_same_tensors(loaded.state_dict(), melception.state_dict())
    from_folder = load_classifier(mel_dir, stats=stats_file)
    assert torch.equal(from_folder.fc.weight, melception.fc.weight)
    for model in (loaded, from_folder):
        assert torch.equal(model.normalization[0], torch.from_numpy(table[:, 0]))
        assert torch.equal(model.normalization[1], torch.from_numpy(table[:, 1]))
    assert load_classifier(mel_file).normalization is None  # no stats given, none beside it: unknown, not guessed

    vgg_loaded = load_classifier(lpaps_dir, kind="vggishish")  # the stats beside it are picked up
    _assert_same_tensors(vgg_loaded.state_dict(), vgg.state_dict())
    assert torch.equal(vgg_loaded.normalization[1], torch.from_numpy(table[:, 1]))
    x = torch.rand(2, 80, 64)
    with torch.no_grad():
        torch.testing.assert_close(vgg_loaded(x), vgg(x))
    metrics = read_checkpoint(lpaps_dir / "vggishish16.pt")["metrics"]
    assert metrics["mAP"] == pytest.approx(0.4758)


# ------------------------------------------------------------------------------------------- our own files
def test_our_run_folders_load_and_resume_reads_safely(original_fixtures, tmp_path):
    from pipeline.build.codebook import codebook_checkpoint
    from pipeline.checkpoints.format import load_checkpoint, save_checkpoint

    codebook = load_codebook(original_fixtures / "codebook_small.ckpt")
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "last.pt", codebook_checkpoint(codebook))
    _assert_same_tensors(load_codebook(run).state_dict(), codebook.state_dict())  # the run folder: last.pt
    marker = tmp_path / "ran"
    payload = _payload("builtins", "exec", f"open(r'{marker}', 'w')")
    _tamper(run / "checkpoints" / "last.pt", tmp_path / "last.pt", payload)
    with pytest.raises(UnsafeCheckpointError, match=r"refused global\(s\) builtins\.exec"):
        load_checkpoint(tmp_path / "last.pt")  # what the training loop's resume reads
    assert not marker.exists()
