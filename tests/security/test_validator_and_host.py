"""Issue 10, items 7 and 10: the validator answers every input with issues (no traceback), tells a caller on
another machine nothing about paths outside the studio's folders, and ``--host ::1`` serves."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import pytest

from studio.services import Services, is_remote
from studio.tabs import builder
from tests.conftest import write_pair
from trainers.config import validate_files, validate_texts

NATIVE_NO_ADAPTER = """output_dir = 'out'
dataset = 'ds.toml'
epochs = 1
save_every_n_epochs = 1
[model]
type = 'chroma'
diffusers_path = 'x'
transformer_path = 'y'
dtype = 'bfloat16'
[optimizer]
type = 'adamw'
lr = 1e-4
"""


def _errors(issues) -> list[str]:
    return [issue.format() for issue in issues if issue.is_error]


def test_native_chroma_config_without_adapter_is_an_error_naming_the_fix():
    found = [i for i in validate_texts(NATIVE_NO_ADAPTER, None, skip_path_checks=True) if i.key == "adapter"]
    assert found and found[0].is_error and "[adapter]" in found[0].fix
    with_dp = NATIVE_NO_ADAPTER + "[studio]\nbackend = 'diffusion-pipe'\n"  # diffusion-pipe fine-tunes fully
    assert not [i for i in validate_texts(with_dp, None, skip_path_checks=True) if i.key == "adapter"]


@pytest.mark.parametrize("text", ["a = " + "[" * 500 + "]" * 500, "a = " + "{b = " * 500 + "1" + "}" * 500,
                                  "a = " + "[" * 70 + "]" * 70])
def test_deep_nesting_is_one_syntax_issue(text):
    issues = validate_texts(text, text)
    assert [i.key for i in issues] == ["(syntax)"] and "nested" in issues[0].message


def test_deep_nesting_in_a_file_is_a_parse_error(tmp_path):
    from trainers.config.issues import ConfigParseError

    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 500 + "]" * 500)
    with pytest.raises(ConfigParseError, match="nested"):
        validate_files(path)


def test_path_of_5000_characters_is_an_issue_not_a_crash(tmp_path):
    long = "a" * 5000
    text = f"output_dir = 'out'\ndataset = '{long}'\n[model]\ntype = 'chroma'\ntransformer_path = '/{long}'\n"
    issues = validate_texts(text, f"[[directory]]\npath = '{long}'\n", base_dir=tmp_path)
    by_key = {i.key: i for i in issues}
    for key in ("dataset", "model.transformer_path", "directory[0].path"):
        assert "cannot be checked: File name too long" in by_key[key].message
        assert len(by_key[key].format()) < 400  # the 5,000 characters are not echoed back
    main = write_pair(tmp_path / "p")
    main.write_text(main.read_text().replace("dataset = 'ds.toml'", f"dataset = '{long}'"))
    assert any("File name too long" in e for e in _errors(validate_files(main)))


def test_empty_key_is_named_not_blank():
    issues = validate_texts("\"\" = ''\n[model]\n\"\" = 1\n", "\"\" = 2\n", skip_path_checks=True)
    shown = [i.format() for i in issues if "empty" in i.message]
    assert len(shown) == 3 and all(': "": ' in s or ': model."": ' in s for s in shown)
    assert all(not i.format().split(":")[2].strip() == "" for i in issues)


def _remote(host: str = "203.0.113.9", **headers) -> gr.Request:
    return gr.Request(session_hash="t", client=SimpleNamespace(host=host, port=1), headers=headers)


def test_remote_caller_learns_nothing_about_paths_outside_the_studio(tmp_path, manager, world):
    services = Services(manager=manager, demo_main=write_pair(tmp_path / "demo"))
    endpoint = builder.validate_endpoint(services)
    secret_dir = tmp_path / "private"
    secret_dir.mkdir()
    (secret_dir / "exists.toml").write_text("x = 1\n")

    def answer(path: Path, request) -> list[str]:
        text = f"output_dir = 'o'\ndataset = '{path}'\n"
        return [f"{i['key']}: {i['message']}" for i in endpoint(text, "", False, "", request)
                if i["key"] == "dataset"]

    remote = _remote()
    assert answer(secret_dir / "exists.toml", remote) == answer(secret_dir / "missing.toml", remote)
    assert "not checked" in answer(secret_dir / "exists.toml", remote)[0]
    # Inside the studio's folders the check still works for remote callers; local callers check anything.
    inside = world.runs / "ds.toml"
    inside.write_text("x = 1\n")
    assert answer(inside, remote) == [] and answer(world.runs / "nope.toml", remote) != []
    local = _remote("127.0.0.1")
    assert answer(secret_dir / "exists.toml", local) == [] and answer(secret_dir / "missing.toml", local) != []
    with pytest.raises(gr.Error, match="base_dir .* refused"):
        endpoint("output_dir = 'o'\n", "", False, str(secret_dir), remote)


def test_what_counts_as_remote():
    assert not is_remote(None) and not is_remote(_remote("127.0.0.1")) and not is_remote(_remote("::1"))
    assert is_remote(_remote("192.168.1.20")) and is_remote(_remote("127.0.0.1", **{"X-Forwarded-For": "1.2.3.4"}))


def test_host_ipv6_loopback_passes_the_check_and_serves():
    import app
    from tests.e2e.conftest import _free_port

    assert app.check_exposure("::1", None) is None  # loopback: no --auth needed
    with gr.Blocks() as blocks:
        gr.Markdown("hello")
    port = _free_port()
    url = app.launch(blocks, "::1", port, None, block=False)
    try:
        assert url == f"http://[::1]:{port}/"
        assert httpx.get(url, timeout=10).status_code == 200
    finally:
        blocks.close()
    with pytest.raises(SystemExit, match="--auth"):
        app.check_exposure("::", None)  # every IPv6 address is not loopback
