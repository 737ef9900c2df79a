# Streamwise worker image: `docker build -t streamwise .`
# `docker run streamwise` runs `streamwise worker fraud`; any other subcommand can be given instead.
FROM python:3.11-slim

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

# .dockerignore lets in only pyproject.toml, README.md, engine/ and topologies/.
COPY . /tmp/src
RUN pip install /tmp/src && rm -rf /tmp/src

USER streamwise
WORKDIR /home/streamwise
VOLUME ["/var/lib/streamwise"]
EXPOSE 6066

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('STREAMWISE_WEB_PORT', '6066'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=3).status == 200 else 1)"]

ENTRYPOINT ["streamwise"]
CMD ["worker", "fraud"]
