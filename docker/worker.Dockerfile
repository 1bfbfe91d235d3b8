# syntax=docker/dockerfile:1
#
# GPU worker image: `loopfree worker --model M` on a CUDA runtime base with a CUDA build of torch.
#
# Build from the repository root (the context must hold pyproject.toml and the packages):
#
#   docker build -f docker/worker.Dockerfile -t loopfree-worker .
#
# Bake a model's weights into the image, so a new pod (or a scale-up from zero) does not download
# gigabytes before its first batch; gated models read a Hugging Face token from a build secret:
#
#   docker build -f docker/worker.Dockerfile \
#       --build-arg PREFETCH_MODEL=senmaonk/loopfree-sd1.5 \
#       --secret id=hf_token,env=HF_TOKEN -t loopfree-worker:sd15 .
#
# Without PREFETCH_MODEL the worker downloads the weights on first start into HF_HOME; mount a
# volume there (compose does) to keep them across restarts.
#
# CUDA versions: the torch wheels carry their own CUDA libraries, so the host needs only a driver.
# PyPI's default torch 2.13 build targets CUDA 13 (driver R580+); the cu126 build used here runs on
# any driver from R525 on through CUDA minor-version compatibility, which covers most GPU clusters.
# The base image's CUDA matches the wheels'. Keep TORCH_VERSION equal to constraints/cpu.txt: CI
# tests that version (tests/deploy checks the two agree).

# ---------------------------------------------------------------------------------------------
# base: the CUDA runtime and a Python 3.12 interpreter (Ubuntu 24.04's; diffusers needs >= 3.11).
FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04 AS base

ARG DEBIAN_FRONTEND=noninteractive
# Pinning apt package versions breaks the build each time Ubuntu publishes a security update and
# drops the old version from the archive; the pinned base image tag fixes the release instead.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ---------------------------------------------------------------------------------------------
# builder: a virtual environment with CUDA torch, then the project with its [worker] extra.
FROM base AS builder

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first and from the CUDA index: the project's torch requirement is then already met, so
# the project install below cannot pull PyPI's build instead. A layer of its own, because it is
# gigabytes and changes far less often than the code.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY constraints/lock.txt ./constraints/lock.txt
COPY core ./core
COPY storage ./storage
COPY migrations ./migrations
COPY taskqueue ./taskqueue
COPY producer ./producer
COPY worker ./worker
COPY status ./status
COPY fleet ./fleet
COPY export ./export
COPY loopfree ./loopfree

# The project by absolute path (what hadolint recognises as local, not an unpinned PyPI name),
# every dependency at the version CI tested (constraints/lock.txt: torch's own dependencies, from
# the CUDA index above, move to those versions too; the lock leaves torch and the CUDA packages
# alone). Naming torch again pins it: if a dependency wanted another torch, pip fails here
# instead of silently replacing the CUDA build. The check after it fails on a CPU-only torch.
RUN pip install --no-cache-dir -c /src/constraints/lock.txt "/src[worker]" "torch==${TORCH_VERSION}" \
 && python -c "import sys, torch; sys.exit(torch.version.cuda is None)"

# ---------------------------------------------------------------------------------------------
# weights: optionally, a model's files in a Hugging Face cache. A stage of its own so that code
# changes do not invalidate it, and it builds in parallel with the builder.
FROM base AS weights

ARG PREFETCH_MODEL=""
ARG HF_HUB_VERSION=2.4.0
ENV HF_HOME=/models/huggingface

RUN python3 -m venv /opt/hf \
 && /opt/hf/bin/pip install --no-cache-dir "huggingface_hub==${HF_HUB_VERSION}"

# The files the worker loads (worker/models.py PIPELINE_FILES; a test keeps the two lists equal),
# not the whole repository, which often also holds .ckpt/.bin copies of the same weights.
# The token comes from a build secret, so it never lands in a layer or in `docker history`.
RUN --mount=type=secret,id=hf_token \
    mkdir -p "${HF_HOME}" \
 && if [ -n "${PREFETCH_MODEL}" ]; then \
      if [ -s /run/secrets/hf_token ]; then HF_TOKEN="$(cat /run/secrets/hf_token)"; export HF_TOKEN; fi; \
      /opt/hf/bin/hf download "${PREFETCH_MODEL}" \
        --include "model_index.json" \
        --include "scheduler/*" \
        --include "tokenizer/*" \
        --include "text_encoder/config.json" \
        --include "text_encoder/*.safetensors" \
        --include "unet/config.json" \
        --include "unet/diffusion_pytorch_model.safetensors" \
        --include "vae/config.json" \
        --include "vae/diffusion_pytorch_model.safetensors"; \
    fi

# ---------------------------------------------------------------------------------------------
# runtime: the venv, the weights cache and a non-root user; no compilers, no pip cache.
FROM base AS runtime

LABEL org.opencontainers.image.title="loopfree-worker" \
      org.opencontainers.image.description="loopfree-queue GPU worker (Loopfree/TiUE sampler)" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric uid so Kubernetes' runAsNonRoot can verify it; above the distribution's range.
RUN groupadd --system --gid 10001 loopfree \
 && useradd --system --uid 10001 --gid loopfree --create-home --home-dir /home/loopfree loopfree

COPY --from=builder /opt/venv /opt/venv
# Owned by the worker's user: without prefetched weights the worker downloads into it at start.
COPY --from=weights --chown=10001:10001 /models /models
COPY --chmod=0755 docker/healthcheck.py /usr/local/bin/loopfree-healthcheck

# NVIDIA_VISIBLE_DEVICES and NVIDIA_DRIVER_CAPABILITIES come from the CUDA base image.
ENV PATH=/opt/venv/bin:$PATH \
    HF_HOME=/models/huggingface \
    LOOPFREE_METRICS_PORT=9400

USER 10001:10001
WORKDIR /home/loopfree
EXPOSE 9400

# The first start may download and load the weights before /metrics answers: allow 10 minutes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD ["loopfree-healthcheck"]

# Exec form, no shell in between: SIGTERM reaches the worker, which finishes the batch in hand
# and exits. Give it time to do so (compose: stop_grace_period; Kubernetes:
# terminationGracePeriodSeconds). The model comes from LOOPFREE_MODEL or `--model`.
CMD ["loopfree", "worker"]
