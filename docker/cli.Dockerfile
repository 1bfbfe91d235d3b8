# syntax=docker/dockerfile:1
#
# Producer / CLI image: `loopfree submit`, `status`, `export`, `scale`, `db upgrade` (the
# migration job), `loopfree metrics` (the queue exporter) and `loopfree ui` (the web view); with
# `--build-arg EXTRAS=export,monitor`, Flower too. No torch, no CUDA: a few hundred MB instead of
# gigabytes.
#
#   docker build -f docker/cli.Dockerfile -t loopfree-cli .
#   docker run --rm -v "$PWD:/data:ro" -e LOOPFREE_BROKER_URL=... loopfree-cli \
#       loopfree submit /data/prompts.txt
#
# No ENTRYPOINT: the command is always spelled in full (`loopfree ...`), as it is on a host.

# ---------------------------------------------------------------------------------------------
FROM python:3.11.11-slim-bookworm AS builder

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

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

# The plain install is the producer, plus the [export] extra (pyarrow, for `loopfree export
# --format parquet`): torch belongs to the [worker] extra. The check fails the build if a
# dependency drags torch in, instead of shipping a 3 GB "CLI" image. Every dependency at the
# version CI tested (constraints/lock.txt). EXTRAS adds more torch-free extras:
# `--build-arg EXTRAS=export,monitor` is the Flower image of compose.yaml.
ARG EXTRAS="export"
RUN pip install --no-cache-dir -c /src/constraints/lock.txt "/src${EXTRAS:+[$EXTRAS]}" \
 && if python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"; then \
      echo "torch got into the CLI image: keep it out of pyproject's base dependencies ([worker] extra)" >&2; \
      exit 1; \
    fi

# ---------------------------------------------------------------------------------------------
FROM python:3.11.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="loopfree-cli" \
      org.opencontainers.image.description="loopfree-queue producer CLI, migrations and queue exporter" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 loopfree \
 && useradd --system --uid 10001 --gid loopfree --create-home --home-dir /home/loopfree loopfree

COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 docker/healthcheck.py /usr/local/bin/loopfree-healthcheck

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001:10001
WORKDIR /home/loopfree

# No HEALTHCHECK here: most uses are one-shot commands. The long-running one, the exporter,
# gets its healthcheck where it is deployed (compose.yaml, k8s/exporter.yaml).
CMD ["loopfree", "--help"]
