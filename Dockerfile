# Character bot image: the Discord bot, a model worker or the console, chosen by the first
# argument (`bot`, the default: Discord when DISCORD_TOKEN is set, else the console).
#   CPU (default):  docker build -t charbot:cpu .
#   CUDA:           docker build --build-arg TORCH_VARIANT=cu130 -t charbot:cuda .
#   docker run -d --env-file .env -e REDIS_URL=... charbot:cpu
#   docker run -d --gpus device=0 -e REDIS_URL=... charbot:cuda worker --name gpu0
#   docker run -it -v charbot-data:/app/.data charbot:cpu console goku
# compose.yaml runs Redis, the bot and a GPU worker together (README: "Running at scale").
FROM python:3.11-slim-bookworm

# Which build of the pinned torch==2.13.0 the install takes: `cpu`, or a CUDA variant of the
# PyTorch index (cu130: CUDA 13.0, NVIDIA driver 580 or newer). A build argument rather than a
# second stage: the two images differ only in where pip finds the torch wheel. CUDA wheels
# bring the CUDA runtime as pip packages and bitsandbytes ships its CUDA kernels (NF4), so no
# CUDA base image is needed; the host needs the NVIDIA driver and the Container Toolkit.
ARG TORCH_VARIANT=cpu

ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/app/.venv/bin:$PATH
WORKDIR /app

# Dependencies first, so code changes do not reinstall them; the README's own install. The extra
# index adds the variant's torch: pip prefers 2.13.0+cpu (or +cu130) to PyPI's plain 2.13.0,
# which on Linux is a multi-GB CUDA build the CPU image must not carry. Installed as root, so
# the bot cannot change its own code or packages.
COPY requirements.txt run.sh ./
RUN PIP_NO_CACHE_DIR=1 PIP_EXTRA_INDEX_URL="https://download.pytorch.org/whl/${TORCH_VARIANT}" \
    ./run.sh install

COPY . .
# The bot runs unprivileged; the data dir (embedded Redis, converted model) is all it writes.
# A numeric USER, so the runtime (and Kubernetes' runAsNonRoot) can tell it is not root.
# COPY keeps the build context's file modes: make characters/ readable to that user whatever
# the host's umask was.
RUN groupadd --gid 10001 charbot \
    && useradd --no-log-init --create-home --uid 10001 --gid 10001 charbot \
    && chmod -R a+rX characters \
    && mkdir -p .data \
    && chown 10001:10001 .data
USER 10001:10001

# Convert the embedded model once at build time so containers start in seconds. Before VOLUME:
# changes to a declared volume during the build are discarded.
RUN python -c "from bot.config import load_config; from bot.engine.loading import resolve_base_model; resolve_base_model(load_config())"

VOLUME ["/app/.data"]
# `bot` is the image's name for `python -m bot` with no command; anything else (worker, console,
# discord, sync ...) is passed on as the command, so `docker run IMAGE worker --name gpu0` works.
ENTRYPOINT ["/bin/sh", "-c", "if [ \"${1:-}\" = bot ]; then shift; fi; exec python -m bot \"$@\"", "charbot"]
CMD ["bot"]
