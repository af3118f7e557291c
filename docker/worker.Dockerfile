# The worker image, two targets. Build from the repository root:
#   docker build -f docker/worker.Dockerfile --target gpu -t xai-worker:gpu .
#   docker build -f docker/worker.Dockerfile --target cpu -t xai-worker:cpu .
# gpu: the official PyTorch CUDA runtime image, its torch kept as it is (same version as constraints.txt).
# cpu: python:3.11-slim with the CPU wheel of the torch pinned in constraints.txt.
ARG PYTORCH_IMAGE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime

FROM python:3.11-slim AS cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv/xai
COPY constraints.txt ./
# torch first, from the CPU index: PyPI's default wheel would bring the CUDA libraries along.
RUN pip install "$(grep '^torch==' constraints.txt)" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
COPY models ./models
# Editable, so the bundled models stay at /srv/xai/models/zoo (the wheel carries no model files).
RUN pip install -c constraints.txt -e ".[worker]" \
 && useradd --create-home --uid 10001 xai \
 && mkdir /models
# glibc's allocator settings, read when the process starts (DESIGN.md, "Explainers"; app/cli.py ALLOCATOR).
ENV MALLOC_MMAP_MAX_=0 \
    MALLOC_TRIM_THRESHOLD_=100000000000 \
    MALLOC_ARENA_MAX=1 \
    XAI_DEVICE=cpu \
    XAI_REDIS_URL=redis://redis:6379/0 \
    XAI_MODEL_DIRS=/models,/srv/xai/models/zoo
USER 10001
# Healthy once a prefork child has loaded its models and beats (key xai:worker:<hostname>:<pid>, 15 s TTL).
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["xai", "worker-health"]
# One prefork child per worker container: the model and CUDA live in the child, never in the parent.
CMD ["xai", "worker", "--pool", "prefork", "--concurrency", "1"]

FROM ${PYTORCH_IMAGE} AS gpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv/xai
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
COPY models ./models
# Pin torch to the version the image ships, so pip keeps the image's CUDA build instead of replacing it;
# then fail the build if it did not.
RUN python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > /tmp/torch-pin.txt \
 && pip install -c /tmp/torch-pin.txt -e ".[worker]" \
 && python -c "import torch; assert torch.version.cuda, 'torch lost its CUDA build'" \
 && useradd --create-home --uid 10001 xai \
 && mkdir /models
ENV MALLOC_MMAP_MAX_=0 \
    MALLOC_TRIM_THRESHOLD_=100000000000 \
    MALLOC_ARENA_MAX=1 \
    XAI_DEVICE=cuda \
    XAI_REDIS_URL=redis://redis:6379/0 \
    XAI_MODEL_DIRS=/models,/srv/xai/models/zoo
USER 10001
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["xai", "worker-health"]
CMD ["xai", "worker", "--pool", "prefork", "--concurrency", "1"]
