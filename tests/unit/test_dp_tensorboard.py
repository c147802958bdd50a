"""Eval losses read from diffusion-pipe's TensorBoard files while they grow (trainers/diffusion_pipe/tb_eval.py).

The files are written here the way diffusion-pipe's _evaluate writes them (train.py:196-227): per eval set the nine
``<name>/loss_quantile_<q:.2f>`` scalars, then ``<name>/loss``, then ``eval/eval_time_sec``, next to ``train/loss``."""

from __future__ import annotations

import pytest
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from trainers.diffusion_pipe.parse import LogParser
from trainers.diffusion_pipe.tb_eval import EvalTail, eval_names

QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # diffusion-pipe train.py:39 TIMESTEP_QUANTILES_FOR_EVAL


def scalar(writer: EventFileWriter, tag: str, value: float, step: int) -> None:
    writer.add_event(Event(wall_time=1.0, step=step, summary=Summary(value=[Summary.Value(tag=tag,
                                                                                        simple_value=value)])))


def evaluate(writer: EventFileWriter, names: tuple[str, ...], x: int, base: float) -> None:
    for name in names:
        losses = [base + q / 10 for q in QUANTILES]
        for q, loss in zip(QUANTILES, losses, strict=True):
            scalar(writer, f"{name}/loss_quantile_{q:.2f}", loss, x)
        scalar(writer, f"{name}/loss", sum(losses) / len(losses), x)
    scalar(writer, "eval/eval_time_sec", 3.5, x)
    writer.flush()


def test_each_eval_is_read_once_as_it_lands_with_its_quantiles(tmp_path):
    writer = EventFileWriter(str(tmp_path))
    tail = EvalTail(("cats", "dogs"))
    assert tail.read(tmp_path) == []
    scalar(writer, "train/loss", 0.5, 1)
    evaluate(writer, ("cats", "dogs"), 0, 0.2)
    first = tail.read(tmp_path)
    assert [(r.name, r.x) for r in first] == [("cats", 0), ("dogs", 0)]
    assert first[0].loss == pytest.approx(0.25)
    assert list(first[0].quantiles) == [f"{q:.2f}" for q in QUANTILES]
    assert first[0].quantiles["0.90"] == pytest.approx(0.29)
    assert tail.read(tmp_path) == []  # nothing new
    scalar(writer, "train/epoch_loss", 0.4, 1)
    evaluate(writer, ("cats", "dogs"), 8, 0.1)
    assert [(r.name, r.x, round(r.loss, 4)) for r in tail.read(tmp_path)] == [("cats", 8, 0.15), ("dogs", 8, 0.15)]


def test_files_of_an_earlier_run_are_skipped_on_resume_and_new_files_are_found(tmp_path):
    old = EventFileWriter(str(tmp_path), filename_suffix=".old")
    evaluate(old, ("cats",), 0, 0.3)
    old.close()
    tail = EvalTail(("cats",))
    tail.skip_existing(tmp_path)
    assert tail.read(tmp_path) == []
    new = EventFileWriter(str(tmp_path), filename_suffix=".new")
    evaluate(new, ("cats",), 40, 0.1)
    assert [r.x for r in tail.read(tmp_path)] == [40]


def test_no_eval_sets_or_no_run_folder_reads_nothing(tmp_path):
    evaluate(EventFileWriter(str(tmp_path)), ("cats",), 0, 0.3)
    assert EvalTail(()).read(tmp_path) == []
    assert EvalTail(("cats",)).read(None) == []
    assert EvalTail(("cat",)).read(tmp_path) == []  # another set's tags are not this one's


def test_eval_names_follow_train_py():
    config = {"eval_datasets": [{"name": "cats", "config": "a.toml"}, "b.toml"]}
    assert eval_names(config) == ("cats", "eval1")  # train.py:437-443: bare paths are named evalN
    assert eval_names({}) == ()


def test_an_eval_after_an_epoch_belongs_to_the_epoch_that_ended():
    parser = LogParser()
    for step in (1, 2, 3):
        parser.feed(f"steps: {step} loss: 0.5 iter time (s): 1.0 samples/sec: 1.0")
    parser.feed("Saving model to directory epoch1")
    parser.feed("Started new epoch: 2")  # printed before the epoch's eval runs (utils/saver.py:143, train.py:945-946)
    assert (parser.epoch, parser.epoch_of(3), parser.epoch_of(0), parser.epoch_of(4)) == (2, 1, 1, 2)
