# Streamwise worker image: `docker build -t streamwise .`
# `docker run streamwise` runs `streamwise worker fraud`; any other subcommand can be given instead.
#
# Two stages: `builder` has a C toolchain and builds the project's wheel (compiled extensions
# will be built there too); `runtime` installs that wheel alone, without extras, on a slim base.

FROM python:3.11-slim AS builder

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# .dockerignore lets in only pyproject.toml, README.md, engine/ and topologies/.
WORKDIR /src
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels .


FROM python:3.11-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Inside a container the HTTP API must listen beyond loopback for EXPOSE to mean anything.
    STREAMWISE_WEB_HOST=0.0.0.0 \
    STREAMWISE_WEB_PORT=6066 \
    STREAMWISE_DATA_DIR=/var/lib/streamwise

RUN useradd --create-home --uid 10001 --user-group streamwise \
 && install -d -o streamwise -g streamwise /var/lib/streamwise

# The wheel only: its runtime dependencies come from PyPI, no extras (bench, dev).
COPY --from=builder /wheels /tmp/wheels
RUN pip install /tmp/wheels/*.whl && rm -rf /tmp/wheels

# Numeric ids, so Kubernetes' runAsNonRoot can verify the user without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/streamwise
VOLUME ["/var/lib/streamwise"]
EXPOSE 6066

# Docker runs this; an OCI-format build (buildah, podman build) drops HEALTHCHECK, and
# Kubernetes ignores it either way: deploy/k8s uses liveness /healthz and readiness /readyz.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('STREAMWISE_WEB_PORT', '6066'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=3).status == 200 else 1)"]

ENTRYPOINT ["streamwise"]
CMD ["worker", "fraud"]
