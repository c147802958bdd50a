"""The builder's full refresh sends only the fields whose look changes (a type change or Validate otherwise
updates ~180 components, and the browser pays for each)."""

from __future__ import annotations

import gradio as gr

from studio import builder_form as bf
from studio import builder_view as bv
from studio.tabs import builder as b
from tests.conftest import write_pair


def _looks(model_type: str, errors: dict) -> list[dict]:
    props = (bv.field_props(f, model_type, None, errors.get(f.id)) for f in bf.form_pool())
    return [{k: v for k, v in p.items() if k != "value"} for p in props]


def _start(tmp_path):
    texts, pair = b.read_pair(write_pair(tmp_path / "p"))
    shown = b.refresh(texts, pair, 0, editors=False)[b.REFRESH_HEAD - 1]
    return texts, pair, shown


def test_a_type_change_updates_exactly_the_fields_that_look_different(tmp_path):
    texts, pair, shown = _start(tmp_path)
    out = b.on_type("flux", texts, pair, 0, shown)
    fields = out[b.REFRESH_HEAD:]
    before, after = _looks("chroma", shown), _looks("flux", out[b.REFRESH_HEAD - 1])
    ids = [f.id for f in bf.form_pool()]
    sent = {fid for fid, upd in zip(ids, fields, strict=True) if upd != gr.skip()}
    differ = {fid for fid, old, new in zip(ids, before, after, strict=True) if old != new}
    assert sent == differ
    assert "main:model.guidance" in sent  # flux reads it, chroma does not: it appears
    assert len(sent) < len(ids) / 2  # most fields look the same for both types
    for fid, upd, look in zip(ids, fields, after, strict=True):
        if fid in sent:
            assert upd == gr.update(**look)  # the value is never sent: what the user typed stays


def test_without_what_is_shown_every_field_is_sent(tmp_path):
    texts, pair, _ = _start(tmp_path)
    fields = b.on_type("flux", texts, pair, 0)[b.REFRESH_HEAD:]
    assert gr.skip() not in fields


def test_validate_answers_each_click_with_the_time(tmp_path, monkeypatch):
    texts, pair, shown = _start(tmp_path)
    clock = iter(["10:00:01", "10:00:02"])
    monkeypatch.setattr(b.time, "strftime", lambda fmt: next(clock))
    first = b.on_validate(texts, pair, 0, True, shown)[b.REFRESH_HEAD - 2]
    second = b.on_validate(texts, pair, 0, False, shown)[b.REFRESH_HEAD - 2]
    assert first == "Checked without path checks at 10:00:01."
    assert second == "Checked with path checks at 10:00:02."
