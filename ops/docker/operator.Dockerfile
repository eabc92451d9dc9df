# syntax=docker/dockerfile:1
# feedserve operator: the kopf controller that reconciles FeedPipeline and FeedModel objects
# (`feedserve operator run`, operators/feedserve_operator/cli_operator.py). Default: watch
# every namespace, liveness probe at :8080/healthz. To watch one namespace instead:
#   docker run feedserve/operator:0.1.0 operator run -n NAMESPACE --liveness http://0.0.0.0:8080/healthz
#
# Build from the repository root (the build context):
#   docker build -f ops/docker/operator.Dockerfile -t feedserve/operator:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: a wheel of the project, installed with the operator extra into /opt/venv -------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY platform/ platform/
COPY featurizers/ featurizers/
COPY operators/ operators/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade "pip>=24" \
 && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install "$(ls /wheels/feedserve-*.whl)[operator]"

# --- runtime ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="feedserve-operator" \
      org.opencontainers.image.description="feedserve operator: reconciles FeedPipeline and FeedModel objects" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/feedserve/feedserve" \
      org.opencontainers.image.base.name="python:3.11-slim"
# a passwd entry for uid 1000 (getpass and friends), home under /tmp; the root filesystem may
# be read-only (mount an emptyDir at /tmp): nothing is written elsewhere
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
    PYTHONUNBUFFERED=1
WORKDIR /app
USER 1000:1000
# kopf's liveness endpoint
EXPOSE 8080
ENTRYPOINT ["feedserve"]
CMD ["operator", "run", "--all-namespaces", "--liveness", "http://0.0.0.0:8080/healthz"]
