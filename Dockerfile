# valqd in a container:
#   docker build -t valqd .
#   docker run -d -p 7400:7400 -v valqd-data:/data valqd --requirepass "$VALQD_PASSWORD"
# or, on a private network where anything that can reach the port may use it:
#   docker run -d -p 7400:7400 -v valqd-data:/data valqd --protected-mode no
# Extra arguments are appended to the command line, e.g. `docker run valqd --loglevel debug`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the package (and its runtime dependencies, hiredis and sortedcontainers), then drop
# the sources: the image only needs what pip installed.
COPY pyproject.toml README.md /tmp/valqd-src/
COPY valqd/ /tmp/valqd-src/valqd/
RUN pip install /tmp/valqd-src \
    && rm -rf /tmp/valqd-src

# An unprivileged user that owns the data directory (a new named volume copies this ownership).
RUN groupadd --system --gid 10001 valqd \
    && useradd --system --uid 10001 --gid valqd --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin valqd \
    && mkdir -p /data \
    && chown valqd:valqd /data

USER valqd
WORKDIR /data
VOLUME /data
EXPOSE 7400

# The slim image has no redis-cli: PING with the standard library and expect +PONG.
# Set VALQD_PORT if you pass another --port.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, socket, sys; s = socket.create_connection(('127.0.0.1', int(os.environ.get('VALQD_PORT', '7400'))), timeout=3); s.sendall(b'PING\\r\\n'); sys.exit(0 if s.recv(64).startswith(b'+PONG') else 1)"]

# Inside the container valqd binds every interface (0.0.0.0) so that a published port reaches
# it. Protected mode stays on: with no password, clients from outside the container are
# refused with an explanation. Pass --requirepass PASSWORD (clients then AUTH), or
# --protected-mode no where the network itself is trusted.
ENTRYPOINT ["valqd", "--bind", "0.0.0.0", "--dir", "/data"]
CMD []
