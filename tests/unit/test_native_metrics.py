"""The native trainer's TensorBoard scalars (trainers/native/metrics.py): one event per step holding every scalar
of that step reads back exactly as diffusion-pipe's one ``SummaryWriter.add_scalar`` per tag (train.py logs
``train/loss`` per step, ``train/epoch_loss`` per epoch, the eval quantiles and ``eval/eval_time_sec``)."""

from __future__ import annotations

import pandas as pd
from tbparse import SummaryReader
from torch.utils.tensorboard import SummaryWriter

from trainers.native.metrics import Metrics


def _scalars(folder) -> pd.DataFrame:
    frame = SummaryReader(str(folder)).scalars
    return frame.sort_values(["tag", "step"]).reset_index(drop=True)[["tag", "step", "value"]]


def test_scalars_read_back_as_add_scalar_writes_them(tmp_path):
    ours, reference = tmp_path / "ours", tmp_path / "reference"
    metrics = Metrics(ours, {"logging_steps": 1})
    writer = SummaryWriter(log_dir=str(reference))
    for step, (loss, lr, norm) in enumerate([(0.5, 1e-4, 2.0), (0.25, 2e-4, None), (0.125, 3e-4, 1.5)], start=1):
        metrics.step(step, step * 4, loss, lr, norm)
        writer.add_scalar("train/loss", loss, step)
        writer.add_scalar("train/lr", lr, step)
        if norm is not None:
            writer.add_scalar("train/grad_norm", norm, step)
    metrics.eval("eval", 3, 12, 0.3, {"0.1": 0.2, "0.9": 0.4}, 1.25)
    for tag, value in (("eval/loss_quantile_0.1", 0.2), ("eval/loss_quantile_0.9", 0.4), ("eval/loss", 0.3),
                       ("eval/eval_time_sec", 1.25)):
        writer.add_scalar(tag, value, 3)
    metrics.epoch(1, 0.3)
    writer.add_scalar("train/epoch_loss", 0.3, 1)
    metrics.close()
    writer.close()
    got, want = _scalars(ours), _scalars(reference)
    assert len(want) == 13
    pd.testing.assert_frame_equal(got, want)


def test_logging_steps_and_the_examples_axis(tmp_path):
    metrics = Metrics(tmp_path, {"logging_steps": 2, "x_axis_examples": True})
    for step in range(1, 5):
        metrics.step(step, step * 8, 1.0 / step, 1e-4, None)
    metrics.close()
    frame = _scalars(tmp_path)
    assert frame[frame.tag == "train/loss"][["step", "value"]].values.tolist() == [[16, 0.5], [32, 0.25]]
