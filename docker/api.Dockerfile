# The API image: FastAPI and the Celery client, no torch (DESIGN.md, "Deployment").
# Build from the repository root:  docker build -f docker/api.Dockerfile -t xai-api .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/xai
COPY pyproject.toml README.md constraints.txt ./
COPY app ./app
COPY workers ./workers
COPY models ./models

# The base dependencies only (no [worker] extra), and a build that fails if torch got in anyway.
# Editable, so the bundled models stay at /srv/xai/models/zoo (the wheel carries no model files).
RUN pip install -c constraints.txt -e . \
 && python -c "import importlib.util, sys; sys.exit('torch in the API image' if importlib.util.find_spec('torch') else 0)" \
 && useradd --create-home --uid 10001 xai \
 && mkdir /models

# Without torch the API cannot run jobs in-process: it always needs the broker.
ENV XAI_HOST=0.0.0.0 \
    XAI_PORT=8000 \
    XAI_REDIS_URL=redis://redis:6379/0 \
    XAI_MODEL_DIRS=/models,/srv/xai/models/zoo

USER 10001
EXPOSE 8000
# No curl in the slim image: python's urllib raises (exit 1) on anything but a 2xx.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('XAI_PORT', '8000'), timeout=4)"]
CMD ["xai", "serve"]
