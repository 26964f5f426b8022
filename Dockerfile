# One image for every service of docker-compose.yaml: the project and its pinned dependencies.
# NOT YET BUILT: the machine this project is developed on has no Docker engine.
FROM python:3.11-slim

RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/project
COPY requirements.txt constraints.txt ./
# torch first and pinned; PyPI's Linux wheel is the large CUDA build: point pip at a
# CPU-only wheel index of your choice to slim the image.
RUN pip install --no-cache-dir torch==2.13.0 \
 && pip install --no-cache-dir -r requirements.txt -c constraints.txt \
 && pip uninstall -y torchvision
COPY . .
ENV PYTHONPATH=/opt/project:/opt/project/plugins \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 \
    TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS="" TLDEXTRACT_CACHE=/tmp/tldextract \
    RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
