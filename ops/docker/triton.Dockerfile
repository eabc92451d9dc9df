# syntax=docker/dockerfile:1
# feedserve inference: NVIDIA Triton Inference Server with feedserve's Python-backend models
# (model_repo/: config.pbtxt + 1/model.py, which import the `feedserve` package), run as the
# operator's `<pipeline>-inference` Deployment runs it (operators/feedserve_operator/render.py).
#
# Build from the repository root (the build context):
#   docker build -f ops/docker/triton.Dockerfile -t feedserve/triton:0.1.0 .
# The FeedPipeline's spec.inference.image must name this image: the stock NGC image that
# render.py defaults to has neither Python 3.11 nor feedserve, so its models cannot load.
#
# Python versions (the reason for the `stub` stage):
# - the NGC 24.08 image's Python is Ubuntu 22.04's system Python 3.10, and its python backend
#   stub (/opt/tritonserver/backends/python/triton_python_backend_stub, the process that runs
#   each model.py) embeds that 3.10 interpreter;
# - feedserve requires Python >= 3.11 (pyproject.toml `requires-python`), and model.py
#   imports it, so the models must run under 3.11. This image installs Ubuntu's python3.11
#   (jammy-updates, universe) and replaces the stub with one compiled against it, from the
#   python_backend release branch that matches the server (r24.08): the stub and the server's
#   libtriton_python.so talk over a shared-memory protocol that is only guaranteed between
#   the same release;
# - the local stack (platform/feedserve/launcher.py) does the same thing differently: it runs
#   the tritonserver bundled in the nvidia-pytriton wheel with that wheel's 3.11 stub. That
#   stub cannot be reused here: nvidia-pytriton 0.7.0 bundles Triton 2.51.0 (NGC 24.10), not
#   2.49.0 (24.08);
# - as in launcher.py, the stub's embedded interpreter finds the project's packages through
#   the venv's bin directory first on PATH (`python3` there is the venv's 3.11).
# Changing TRITON_TAG rebuilds the stub from the matching branch (r${TRITON_TAG}).
#
# torch==2.13.0 comes from pip's default index (PyPI: the CUDA build, several GB; needs a
# node driver recent enough for its CUDA). The operator sets FEEDSERVE_DEVICE=cuda when
# spec.inference.gpusPerPod > 0 (the default). For a CPU-only pool (gpusPerPod: 0):
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TRITON_TAG=24.08
ARG PYTHON_IMAGE=python:3.11-slim

# --- wheel: the project as a (pure-Python) wheel -------------------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY platform/ platform/
COPY featurizers/ featurizers/
COPY operators/ operators/
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- stub: the python backend stub for Python 3.11, from the server's own release branch ---------
# the -py3-min image is NVIDIA's build base for this release (CUDA toolkit included); the
# build fetches Triton's common/core/backend repositories, pybind11, dlpack, googletest and
# Boost headers from the network
FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}-py3-min AS stub
ARG TRITON_TAG
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential ca-certificates cmake git \
      libarchive-dev rapidjson-dev zlib1g-dev \
      python3.11 python3.11-dev \
 && rm -rf /var/lib/apt/lists/*
RUN git clone --depth 1 --branch "r${TRITON_TAG}" \
      https://github.com/triton-inference-server/python_backend /src/python_backend \
 && cmake -S /src/python_backend -B /src/build \
      -DCMAKE_BUILD_TYPE=Release \
      -DTRITON_ENABLE_GPU=ON \
      -DTRITON_BACKEND_REPO_TAG="r${TRITON_TAG}" \
      -DTRITON_COMMON_REPO_TAG="r${TRITON_TAG}" \
      -DTRITON_CORE_REPO_TAG="r${TRITON_TAG}" \
      -DPYBIND11_FINDPYTHON=ON \
      -DPython_EXECUTABLE=/usr/bin/python3.11 \
 && cmake --build /src/build --target triton-python-backend-stub --parallel \
 && ldd /src/build/triton_python_backend_stub | grep -q "libpython3\.11\.so"

# --- runtime ---------------------------------------------------------------------------------
FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}-py3
ARG TRITON_TAG
ARG VERSION=0.1.0
ARG TORCH_INDEX_URL=
ARG DEBIAN_FRONTEND=noninteractive
LABEL org.opencontainers.image.title="feedserve-triton" \
      org.opencontainers.image.description="feedserve inference: Triton with the feedserve Python-backend models" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/feedserve/feedserve" \
      org.opencontainers.image.base.name="nvcr.io/nvidia/tritonserver:${TRITON_TAG}-py3"
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpython3.11 python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/*
COPY --from=stub /src/build/triton_python_backend_stub \
     /opt/tritonserver/backends/python/triton_python_backend_stub
# torch first and pinned (as the Makefile does); the models extra brings the rest
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    python3.11 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade "pip>=24" \
 && /opt/venv/bin/pip install --no-cache-dir \
      ${TORCH_INDEX_URL:+--index-url "${TORCH_INDEX_URL}"} "torch==2.13.0" \
 && /opt/venv/bin/pip install --no-cache-dir "$(ls /wheels/feedserve-*.whl)[models]" \
 && ! ldd /opt/tritonserver/backends/python/triton_python_backend_stub | grep "not found" \
 && /opt/venv/bin/python -c "import feedserve.models.serving, feedserve.models.triton_backend"
# the default model repository; the operator mounts its PersistentVolumeClaim over /models
COPY model_repo/ /models/
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    HOME=/tmp \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    OMP_WAIT_POLICY=PASSIVE
# the uid/gid the operator's pods run as (render.py RUN_AS)
USER 1000:1000
EXPOSE 8000 8001 8002
# the same command as render.py's tritonserver container for the default spec (its models)
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=explicit", \
     "--load-model=retrieval_encoder", "--load-model=post_index", \
     "--load-model=generative_ranker", "--http-port=8000", "--grpc-port=8001", \
     "--metrics-port=8002", "--exit-timeout-secs=30", "--log-verbose=0"]
