"""The shared training loop: resume equals an uninterrupted run, the non-finite guard, best/last, two processes."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pipeline.checkpoints.format import load_checkpoint
from pipeline.config.presets import preset_dict
from pipeline.train.loop import NonFiniteLossError, Task, Trainer
from tests.helpers import in_two_processes


class Regression(Task):
    """y = 3x - 1 with Adam: enough state (moments, RNG, data order) to catch a bad resume."""

    kind = "toy"

    def __init__(self, poison_at: int | None = None):
        super().__init__()
        self.poison_at = poison_at
        g = torch.Generator().manual_seed(0)
        x = torch.randn(40, 1, generator=g)
        self.data = TensorDataset(x, 3 * x - 1 + 0.1 * torch.randn(40, 1, generator=g))

    def build(self):
        torch.manual_seed(0)
        self.modules = {"net": nn.Sequential(nn.Linear(1, 8), nn.Dropout(0.2), nn.Linear(8, 1))}
        self.optimizers = {"opt": torch.optim.Adam(self.modules["net"].parameters(), lr=0.05)}

    def train_dataset(self):
        return self.data

    def val_dataset(self):
        return self.data

    def train_step(self, batch, step):
        x, y = batch
        loss = ((self.modules["net"](x) - y) ** 2).mean()
        if self.poison_at is not None and step >= self.poison_at:
            loss = loss * float("nan")
        self.trainer.backward(loss)
        self.optimizers["opt"].step()
        self.optimizers["opt"].zero_grad()
        return {"loss": loss}

    def val_step(self, batch):
        x, y = batch
        return {"loss": ((self.modules["net"](x) - y) ** 2).mean()}

    def model_args(self):
        return {"hidden": 8}

    def state_dict(self):
        return self.trainer.unwrap("net").state_dict()

    def load_state_dict(self, sd):
        self.trainer.unwrap("net").load_state_dict(sd)


CFG = {**preset_dict("trainer", "cpu"), "max_steps": 12, "val_every": 4, "ckpt_every": 4, "log_every": 100}


def _train(run_dir, task=None, **overrides):
    task = task or Regression()
    task.batch_size = 4
    trainer = Trainer(task, {**CFG, **overrides}, run_dir, logger_cfg={"name": "none"}, seed=7)
    metrics = trainer.fit()
    return trainer, metrics


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    full, full_metrics = _train(tmp_path / "full")
    _train(tmp_path / "split", max_steps=6)  # "interrupted" after 6 steps, last.pt at step 6
    resumed, resumed_metrics = _train(tmp_path / "split")
    assert resumed.step == full.step == 12
    for a, b in zip(full.task.state_dict().values(), resumed.task.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    a = full.task.optimizers["opt"].state_dict()["state"]
    b = resumed.task.optimizers["opt"].state_dict()["state"]
    for k in a:
        torch.testing.assert_close(a[k]["exp_avg_sq"], b[k]["exp_avg_sq"], rtol=0, atol=0)
    assert full_metrics["val/loss"] == pytest.approx(resumed_metrics["val/loss"], rel=0, abs=0)
    assert full_metrics["val/loss"] < 1.0  # it learned something


def test_checkpoints_hold_what_loaders_need(tmp_path):
    trainer, _ = _train(tmp_path)
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(tmp_path / "checkpoints" / name)
        assert ckpt["kind"] == "toy" and ckpt["model_args"] == {"hidden": 8}
        assert set(ckpt["state_dict"]) == set(trainer.task.state_dict())
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["train_state"]["step"] == 12
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        _train(tmp_path, task=Regression(poison_at=9))
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["train_state"]["step"] == 8
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_early_stopping(tmp_path):
    class Stalled(Regression):
        def val_step(self, batch):
            return {"loss": torch.tensor(1.0)}

    trainer, _ = _train(tmp_path, task=Stalled(), val_every=1, early_stop_patience=2, max_steps=50)
    assert trainer.stopped_early and trainer.step == 4


def _two_process_run(run_dir):
    from accelerate import PartialState

    trainer, metrics = _train(run_dir, max_steps=4)
    assert PartialState().num_processes == 2
    assert math.isfinite(metrics["val/loss"])


def test_two_processes(tmp_path):
    in_two_processes("tests.test_train_loop:_two_process_run", str(tmp_path))
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["train_state"]["num_processes"] == 2 and ckpt["train_state"]["step"] == 4


def test_the_speed_options_are_the_presets_and_change_nothing_but_speed():
    """trainer.{channels_last, fused_optimizer, tf32}: trainer=gpu turns the first two on, cpu none; NHWC weights
    and a fused Adam give the step the plain one gives (up to rounding)."""
    from pipeline.train.loop import optimizer_options, speed_up

    gpu, cpu = preset_dict("trainer", "gpu"), preset_dict("trainer", "cpu")
    assert (gpu["fused_optimizer"], gpu["channels_last"], gpu["compile"], gpu["tf32"]) == (True, True, False, False)
    assert not any(cpu[k] for k in ("fused_optimizer", "channels_last", "compile", "tf32"))
    assert optimizer_options(gpu) == {"fused": True} and optimizer_options(cpu) == {}
    results = []
    for options in (cpu, gpu):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 1, 3))
        speed_up([net], options)
        assert net[0].weight.is_contiguous(memory_format=torch.channels_last) == options["channels_last"]
        opt = torch.optim.Adam(net.parameters(), lr=0.01, **optimizer_options(options))
        x = torch.randn(3, 2, 8, 8)
        for _ in range(3):
            loss = net(x).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        results.append([p.detach().clone() for p in net.parameters()])
    for plain, fast in zip(*results):
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    assert not torch.backends.cuda.matmul.allow_tf32  # tf32: false, explicitly
