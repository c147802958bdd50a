"""Docker and Hugging Face Space: what can be checked without building the image. The Dockerfile follows
hadolint's rules (hadolint itself runs when installed), its CUDA base matches the pinned torch, users, paths
and volumes agree with docker-compose.yml, the health check answers against a served studio, the entry command
refuses 0.0.0.0 without a login and takes one from a secret file; the README carries the Space front matter."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

import app
from trainers import cli, hosting

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _one(name: str) -> str:
    values = [rest for word, rest in instructions() if word == name]
    assert len(values) == 1, name
    return values[0]


def _arg(name: str) -> str:
    return next(rest.split("=", 1)[1] for word, rest in instructions() if word == "ARG" and rest.startswith(name + "="))


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))


def test_hadolint_when_installed():
    if shutil.which("hadolint") is None:
        pytest.skip("hadolint is not installed here; test_dockerfile_follows_hadolint_rules checks its rules")
    done = subprocess.run(["hadolint", "--config", str(REPO / ".hadolint.yaml"), str(DOCKERFILE)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_follows_hadolint_rules():
    steps = instructions()
    runs = [rest for word, rest in steps if word == "RUN"]
    assert not any(word == "ADD" for word, _ in steps)  # DL3020: COPY for files
    assert re.match(r"\S+:\S+", _one("FROM")) and ":latest" not in _one("FROM")  # DL3006 / DL3007
    assert _one("CMD").startswith("[") and _one("HEALTHCHECK").split("CMD", 1)[1].strip().startswith("[")  # DL3025
    for run in runs:
        if "apt-get install" in run:
            assert "--no-install-recommends" in run and "-y" in run  # DL3015, DL3014
            assert "rm -rf /var/lib/apt/lists/*" in run  # DL3009
        if "pip install" in run:
            assert "--no-cache-dir" in run  # DL3042
        assert "sudo " not in run and not re.search(r"\bcd\b", run)  # DL3004, DL3003
    assert '"-o", "pipefail"' in _one("SHELL")  # DL4006
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0")  # DL3002


def test_cuda_base_matches_the_pinned_torch():
    pins = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    torch_pin = next(p for p in pins if p.startswith("torch=="))
    assert torch_pin == f"torch=={_arg('TORCH_VERSION')}"
    cuda = re.match(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-\S*runtime", _one("FROM"))
    assert cuda, "a CUDA runtime base"
    assert _arg("TORCH_INDEX").endswith(f"/cu{cuda.group(1)}{cuda.group(2)}")


def test_users_volumes_and_paths_agree_with_compose():
    service = compose()["services"]["studio"]
    uid = _arg("APP_UID")
    assert service["user"] == f"{uid}:{uid}"
    assert _one("USER") == "studio" and '--uid "${APP_UID}"' in " ".join(r for w, r in instructions() if w == "RUN")
    declared = set(yaml.safe_load(_one("VOLUME")))
    mounted = {v.split(":")[1] for v in service["volumes"]}
    assert declared <= mounted
    env = dict(rest.split("=", 1) for word, rest in instructions() if word == "ENV" for rest in
               shlex.split(rest.replace("\\", "")))
    assert env["DP_STUDIO_HOME"] in declared
    secret = service["secrets"][0]
    assert env["DP_STUDIO_AUTH_FILE"] == service["environment"]["DP_STUDIO_AUTH_FILE"] == f"/run/secrets/{secret}"
    assert secret in compose()["secrets"]
    assert _one("EXPOSE") == "7860" and service["ports"][0].endswith(":7860:7860")
    commented = (REPO / "docker-compose.yml").read_text(encoding="utf-8")
    assert f"- ./diffusion-pipe:{env['DP_STUDIO_DIFFUSION_PIPE']}" in commented  # the optional checkout mount


def test_compose_reserves_the_gpus():
    devices = compose()["services"]["studio"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_entry_command_runs_outside_docker_and_refuses_without_a_login(tmp_path, monkeypatch):
    command = yaml.safe_load(_one("CMD"))
    assert command[:2] == ["dp-studio", "serve"] and "0.0.0.0" in command
    args = cli.build_parser().parse_args(command[1:])  # the same CLI the image has
    monkeypatch.delenv("DP_STUDIO_AUTH", raising=False)
    monkeypatch.setenv("DP_STUDIO_AUTH_FILE", str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match="cannot read the login file"):
        args.handler(args)
    monkeypatch.delenv("DP_STUDIO_AUTH_FILE")
    with pytest.raises(SystemExit, match="refusing to serve on 0.0.0.0 without --auth"):
        args.handler(args)


def test_login_file_is_read_and_checked(tmp_path):
    good = tmp_path / "auth"
    good.write_text("me:s3cret pass\n", encoding="utf-8")
    assert hosting.resolve_auth(None, None, {"DP_STUDIO_AUTH_FILE": str(good)}) == "me:s3cret pass"
    assert hosting.resolve_auth("cli:wins", str(good), {}) == "cli:wins"
    assert hosting.resolve_auth(None, None, {}) is None
    bad = tmp_path / "bad"
    bad.write_text("no-colon\n", encoding="utf-8")
    with pytest.raises(hosting.HostingError, match="must hold USER:PASSWORD"):
        hosting.resolve_auth(None, str(bad), {})
    assert app.check_exposure("0.0.0.0", hosting.auth_from_file(good)) == ("me", "s3cret pass")


def test_healthcheck_answers_against_a_served_studio(tmp_path):
    from studio.services import Services
    from tests.conftest import write_pair
    from tests.e2e.conftest import serve
    from trainers.runs import RunManager

    check = yaml.safe_load(_one("HEALTHCHECK").split("CMD", 1)[1])
    assert check[0] == "python" and "7860" in check[2]
    blocks, url = serve(Services(manager=RunManager([tmp_path / "runs"]), demo_main=write_pair(tmp_path / "d"),
                                 allowed_roots=[tmp_path]))
    try:
        port = url.rstrip("/").rsplit(":", 1)[1]
        assert subprocess.run([sys.executable, "-c", check[2].replace("7860", port)], timeout=30).returncode == 0
    finally:
        blocks.close()
    assert subprocess.run([sys.executable, "-c", check[2].replace("7860", port)], timeout=30,
                          capture_output=True).returncode != 0


def test_space_front_matter_and_persistent_storage(tmp_path):
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py" and front["suggested_hardware"]
    assert (REPO / front["app_file"]).is_file()
    assert "." in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()  # the studio itself
    data = tmp_path / "data"
    data.mkdir()
    env = {"SPACE_ID": "me/dp-studio"}
    assert hosting.apply_space_defaults(env, data) == data / "dp-studio"
    assert env["DP_STUDIO_HOME"] == str(data / "dp-studio")
    assert hosting.apply_space_defaults({"SPACE_ID": "x", "DP_STUDIO_HOME": "/mine"}, data) is None
    assert hosting.apply_space_defaults({}, data) is None  # not on a Space
    assert hosting.apply_space_defaults({"SPACE_ID": "x"}, tmp_path / "absent") is None  # no persistent storage
