# Character bot image. Build: docker build -t charbot .
# Run:   docker run --env-file .env -v charbot-data:/app/.data charbot
# (with DISCORD_TOKEN in .env the Discord bot starts, else the console: add -it).
FROM python:3.11-slim

WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies first, so code changes do not reinstall them. requirements.txt pins the CPU
# torch build; for a CUDA host install the matching CUDA torch 2.13.0 wheel instead.
COPY requirements.txt run.sh ./
RUN PIP_NO_CACHE_DIR=1 ./run.sh install

COPY . .
# Convert the embedded model once at build time so containers start in seconds.
RUN .venv/bin/python -c "from bot.config import load_config; from bot.engine.loading import resolve_base_model; resolve_base_model(load_config())"

VOLUME ["/app/.data"]
ENTRYPOINT ["./run.sh"]
