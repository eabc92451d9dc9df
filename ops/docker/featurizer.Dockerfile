# syntax=docker/dockerfile:1
# feedserve featurizer: one image, three commands, all given by the operator
# (operators/feedserve_operator/render.py):
#   - the Celery worker (this image's default CMD, as the `featurizer` container runs it);
#   - the event consumer, the pod's second container:  python -m feedserve_featurizers.consumer
#   - the workflow's offline Jobs/CronJobs:             feedserve run offline STEP --no-progress
#
# Build from the repository root (the build context):
#   docker build -f ops/docker/featurizer.Dockerfile -t feedserve/featurizer:0.1.0 .
#
# The `embed_posts` offline step (the post index rebuild, run in this image when a workflow
# schedules it) embeds posts with the retrieval encoder and so needs torch, which the
# featurizer extra does not bring. For a pipeline that runs it, build with the models extra
# too (torch==2.13.0 from the CPU wheel index; the offline Job runs on CPU):
#   docker build -f ops/docker/featurizer.Dockerfile --build-arg FEEDSERVE_EXTRAS=featurizer,models \
#     -t feedserve/featurizer:0.1.0 .
#
# A fourth command, for pipelines whose inference pool runs on KServe with the featurizer as
# the encoder's KServe transformer (render_kserve.py; inference.kserve.transformer):
#   python -m feedserve_featurizers.kserve_transformer   (port 8080; KServe adds its arguments)
# It needs the kserve extra:
#   docker build -f ops/docker/featurizer.Dockerfile --build-arg FEEDSERVE_EXTRAS=featurizer,kserve \
#     -t feedserve/featurizer:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: a wheel of the project, installed with the featurizer extra into /opt/venv -----
FROM ${PYTHON_IMAGE} AS builder
ARG FEEDSERVE_EXTRAS=featurizer
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY platform/ platform/
COPY featurizers/ featurizers/
COPY operators/ operators/
# torch first and pinned (as the Makefile does): any other version pulls a multi-GB CUDA build
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade "pip>=24" \
 && case ",${FEEDSERVE_EXTRAS}," in \
      *,models,*) /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==2.13.0" ;; \
    esac \
 && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install "$(ls /wheels/feedserve-*.whl)[${FEEDSERVE_EXTRAS}]"

# --- runtime ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="feedserve-featurizer" \
      org.opencontainers.image.description="feedserve featurizer: Celery worker, event consumer, offline jobs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/feedserve/feedserve" \
      org.opencontainers.image.base.name="python:3.11-slim"
# a passwd entry for uid 1000 (getpass and friends), home under /tmp; the root filesystem may
# be read-only (the operator's pods mount an emptyDir at /tmp): nothing is written elsewhere
RUN groupadd --gid 1000 feedserve \
 && useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin feedserve \
 && python -m compileall -q --invalidation-mode unchecked-hash /usr/local/lib/python3.11
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    HOME=/tmp \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false
WORKDIR /app
USER 1000:1000
# no ports: the worker and the consumer only talk to Redis and Triton
# the same command as render.py's `featurizer` container (spec.featurizers.concurrency: 4)
CMD ["python", "-m", "celery", "-A", "feedserve_featurizers.celery_app", "worker", \
     "--concurrency=4", "--loglevel=INFO", "--hostname=featurizer@%h", \
     "--without-gossip", "--without-mingle", "--without-heartbeat"]
