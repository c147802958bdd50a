"""A TensorBoard event file written in the training thread: the records TensorBoard's own writer makes, without
its costs per step.

``torch.utils.tensorboard.SummaryWriter`` hands each event to a writer thread that opens the file, appends the
record and closes it again, computing the record's checksums in Python while holding the GIL: on the CPU demo
that thread and its system calls cost about 0.6 % of a training step (bench/overhead.py, docs/benchmarks.md).
Here the records go into one buffered file, flushed every ``FLUSH_S`` seconds and on :meth:`flush` / :meth:`close`
(TensorBoard's own writer flushes every 120 s).

Format (TensorBoard's ``RecordWriter``, a TFRecord): per record the data length (uint64, little endian), its
masked CRC-32C, the data (a serialized ``Event``), the data's masked CRC-32C. The file's first event holds
``file_version = "brain.Event:2"``; a resumed run first writes a ``SessionLog.START`` at the step it resumes from,
which tells TensorBoard to drop the older points after it (``SummaryWriter``'s ``purge_step``).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

FLUSH_S = 2.0  # at most this long between a record and TensorBoard seeing it
_serial = 0  # files made by this process (the name's last part, as TensorBoard's writer numbers them)


class EventFile:
    """One ``events.out.tfevents.*`` file in ``folder``; ``purge_step``: the step a resumed run starts from."""

    def __init__(self, folder: Path, purge_step: int | None = None):
        global _serial
        folder.mkdir(parents=True, exist_ok=True)
        _serial += 1
        self.path = folder / (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                              f"{os.getpid()}.{_serial}")
        self._file = open(self.path, "wb")  # noqa: SIM115 - kept open for the run, closed by close()
        self.problem = ""  # why the file stopped being written ("" while it is)
        self._flushed = time.monotonic()
        self.write(Event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge_step is not None:
            self.write(Event(wall_time=time.time(), step=purge_step,
                             session_log=SessionLog(status=SessionLog.START)))
        self.flush()

    def scalars(self, values: dict[str, float], step: int) -> None:
        """One event holding a ``simple_value`` per tag: what a reader gets from one ``add_scalar`` per tag."""
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()])
        self.write(Event(wall_time=time.time(), step=step, summary=summary))

    def write(self, event: Event) -> None:
        if self.problem:
            return
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        try:
            self._file.write(b"".join((header, struct.pack("<I", masked_crc32c(header)), data,
                                       struct.pack("<I", masked_crc32c(data)))))
        except OSError as exc:
            self._failed(exc)
            return
        if time.monotonic() - self._flushed >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        if self.problem:
            return
        try:
            self._file.flush()
        except OSError as exc:
            self._failed(exc)
        self._flushed = time.monotonic()

    def _failed(self, exc: OSError) -> None:
        """TensorBoard's file is a copy of what the events file holds: a full disk or a lost folder stops it, not
        the run (whose saves say what is wrong and what to do)."""
        self.problem = f"TensorBoard logging stopped: {self.path.name} could not be written ({exc})"
        try:
            self._file.close()
        except OSError:
            pass  # the buffered rest cannot be written either

    def close(self) -> None:
        if not self._file.closed:
            try:
                self._file.close()
            except OSError as exc:
                self._failed(exc)
