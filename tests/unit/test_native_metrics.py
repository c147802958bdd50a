"""The native trainer's TensorBoard scalars (trainers/native/metrics.py): one event per step holding every scalar
of that step reads back exactly as diffusion-pipe's one ``SummaryWriter.add_scalar`` per tag (train.py:929-931
``train/loss`` and ``train/grad_norm`` per step, :950 ``train/epoch_loss`` per epoch, :213-224 the eval quantiles,
``<name>/loss`` and ``eval/eval_time_sec``)."""

from __future__ import annotations

import pandas as pd
from tbparse import SummaryReader
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from trainers.native.metrics import Metrics


def _scalars(folder) -> pd.DataFrame:
    frame = SummaryReader(str(folder)).scalars  # (a resumed run's points share steps: the value orders them too)
    return frame.sort_values(["tag", "step", "value"]).reset_index(drop=True)[["tag", "step", "value"]]


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


def test_a_resumed_run_replaces_the_points_after_its_checkpoint_as_purge_step_does(tmp_path, monkeypatch):
    """A run resumed from step 3 writes steps 4-6 again: TensorBoard keeps the new points (SummaryWriter's
    purge_step, torch/utils/tensorboard/writer.py: a SessionLog.START at that step)."""
    import time

    ours, reference = tmp_path / "ours", tmp_path / "reference"
    runs = [(None, {}, range(1, 7), 1.0, 1e-4), (3, {"purge_step": 4, "filename_suffix": ".resumed"}, range(4, 8), 0.5,
                                                 2e-4)]
    real_time = time.time
    for later, (resumed_at, purge, steps, loss, lr) in enumerate(runs):
        # the resumed run starts later, as a new process does: its file names sort after the first run's (both
        # writers name files by the second they start in, then by a per-process number)
        monkeypatch.setattr(time, "time", lambda later=later: real_time() + 10 * later)
        metrics, writer = Metrics(ours, {}, resumed_at=resumed_at), SummaryWriter(log_dir=str(reference), **purge)
        for step in steps:
            metrics.step(step, step, loss, lr, None)
            writer.add_scalar("train/loss", loss, step)
            writer.add_scalar("train/lr", lr, step)
        metrics.close()
        writer.close()
    pd.testing.assert_frame_equal(_scalars(ours), _scalars(reference))  # the same records (tbparse keeps all)
    for folder in (ours, reference):  # TensorBoard's own reader applies the purge
        acc = EventAccumulator(str(folder))
        acc.Reload()
        loss = [(e.step, e.value) for e in acc.Scalars("train/loss")]
        assert loss == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 0.5), (5, 0.5), (6, 0.5), (7, 0.5)], folder.name


def test_records_are_checksummed_tfrecords_visible_before_the_run_ends(tmp_path, monkeypatch):
    """Each record: length (uint64 LE), its masked CRC-32C, the Event, the Event's masked CRC-32C (TensorBoard's
    RecordWriter); records reach the file within FLUSH_S, without closing it."""
    import struct

    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    from trainers.native import tb_file

    monkeypatch.setattr(tb_file, "FLUSH_S", 0.0)
    metrics = Metrics(tmp_path, {})
    metrics.step(1, 4, 0.5, 1e-4, 2.0)
    (path,) = tmp_path.glob("events.out.tfevents.*")
    raw, events = path.read_bytes(), []
    while raw:
        header, (crc,) = raw[:8], struct.unpack("<I", raw[8:12])
        (length,) = struct.unpack("<Q", header)
        data, (data_crc,) = raw[12:12 + length], struct.unpack("<I", raw[12 + length:16 + length])
        assert crc == masked_crc32c(header) and data_crc == masked_crc32c(data)
        events.append(Event.FromString(data))
        raw = raw[16 + length:]
    assert events[0].file_version == "brain.Event:2"
    assert events[-1].step == 1 and {v.tag: v.simple_value for v in events[-1].summary.value} == {
        "train/loss": 0.5, "train/lr": struct.unpack("<f", struct.pack("<f", 1e-4))[0], "train/grad_norm": 2.0}
    metrics.close()


def test_a_tensorboard_file_that_cannot_be_written_stops_logging_not_the_run(tmp_path, monkeypatch):
    from tests.fixtures.full_disk import FullFile
    from trainers.native import tb_file

    monkeypatch.setattr(tb_file, "FLUSH_S", 0.0)
    metrics = Metrics(tmp_path, {})
    metrics.step(1, 4, 0.5, 1e-4, None)
    metrics.tb._file.close()
    metrics.tb._file = FullFile()
    metrics.step(2, 8, 0.25, 1e-4, None)  # no exception
    assert "TensorBoard logging stopped" in metrics.tb.problem and "No space left" in metrics.tb.problem
    metrics.step(3, 12, 0.125, 1e-4, None)
    metrics.eval("eval", 3, 12, 0.3, {"0.1": 0.2}, 1.0)
    metrics.close()
    assert _scalars(tmp_path).step.tolist() == [1, 1]  # what was written before the failure reads back
