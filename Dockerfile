# dp-studio with CUDA: the studio, its native trainer and the demo, served on port 7860.
#   docker compose up            (see docker-compose.yml: GPU reservation, volumes, the login secret)
# The CUDA runtime matches the pinned torch (pyproject.toml torch==2.13.0, installed from PyTorch's cu128 index).
# docker run reaches the page only with a login: --host 0.0.0.0 refuses to start without one.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG APP_UID=1000

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    DP_STUDIO_HOME=/data/studio \
    DP_STUDIO_AUTH_FILE=/run/secrets/dp_studio_auth \
    DP_STUDIO_DIFFUSION_PIPE=/opt/diffusion-pipe \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python 3.12 is Ubuntu 24.04's; git for a mounted diffusion-pipe checkout; no compilers (DeepSpeed ops JIT).
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# The image's own ubuntu user has uid 1000; the studio runs as it, never as root.
RUN if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
    && useradd --create-home --uid "${APP_UID}" --shell /bin/bash studio \
    && python3 -m venv /opt/venv \
    && mkdir -p /data/studio /models /datasets /outputs /opt/diffusion-pipe /app \
    && chown -R studio:studio /data /models /datasets /outputs /opt/diffusion-pipe /app /opt/venv

WORKDIR /app
USER studio

# torch first, from the CUDA index, at the pinned version; then the studio (the same pin holds).
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY --chown=studio:studio pyproject.toml README.md app.py ./
COPY --chown=studio:studio trainers ./trainers
COPY --chown=studio:studio studio ./studio
COPY --chown=studio:studio profiles ./profiles
COPY --chown=studio:studio assets ./assets
RUN DS_BUILD_OPS=0 pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" . \
    && dp-studio prepare-demo

# models (base checkpoints), datasets, outputs (run folders), studio data (profiles, secrets).
VOLUME ["/models", "/datasets", "/outputs", "/data/studio"]
EXPOSE 7860

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:7860/', timeout=4).status == 200 else 1)"]

# Binding 0.0.0.0 needs a login: from the secret file DP_STUDIO_AUTH_FILE (or DP_STUDIO_AUTH); without one the
# studio refuses to start and says so.
CMD ["dp-studio", "serve", "--host", "0.0.0.0", "--port", "7860"]
