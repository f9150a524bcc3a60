# valqd in a container:
#   docker build -t valqd .
#   printf '%s\n' "$VALQD_PASSWORD" > valqd-password      # or a Docker/Kubernetes secret
#   docker run -d -p 7400:7400 -v valqd-data:/data \
#       -v "$PWD/valqd-password:/run/secrets/valqd-password:ro" \
#       valqd --requirepass-file /run/secrets/valqd-password
# or with the password in the environment: docker run -e VALQD_REQUIREPASS=... valqd
# As a sidecar in a pod, bind loopback instead: the pod's containers share it, nothing else
# reaches it:  docker run valqd --bind 127.0.0.1
# Extra arguments are appended to the command line, e.g. `docker run valqd --loglevel debug`.

# Build stage: the slim image has no C compiler, and without one `pip install` would
# silently install pure Python. Here gcc compiles valqd's hot modules with mypyc
# (VALQD_BUILD=compiled fails the build rather than fall back), and pip collects the wheels
# of the runtime dependencies and of the `fast` extra (uvloop, the event loop the benchmark
# figures were measured with) beside it.
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py MANIFEST.in README.md /src/
COPY buildsys/ /src/buildsys/
COPY valqd/ /src/valqd/
RUN VALQD_BUILD=compiled pip wheel --wheel-dir /wheels "/src[fast]"

# The image: Python and the wheels built above, no compiler, no sources.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only the wheels of the build stage (--no-index); VALQD_BUILD=compiled makes a valqd without
# its compiled modules refuse to start instead of running slower.
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-index --find-links /tmp/wheels "valqd[fast]" \
    && rm -rf /tmp/wheels
ENV VALQD_BUILD=compiled

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

# PING, after AUTH when the server has a password: `valqd healthcheck` reads the port and
# the password as the server got them (VALQD_PORT, VALQD_REQUIREPASS, VALQD_REQUIREPASS_FILE,
# or the server's --port, --requirepass, --requirepass-file). The start period covers the
# AOF loading (valqd answers -LOADING meanwhile).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["valqd", "healthcheck"]

# Inside the container valqd binds every interface (0.0.0.0) so that a published port reaches
# it. Protected mode stays on: with no password, clients from outside the container are
# refused with an explanation. Give a password (--requirepass-file, VALQD_REQUIREPASS), or
# --bind 127.0.0.1 where only the pod's own containers are clients.
ENTRYPOINT ["valqd", "--bind", "0.0.0.0", "--dir", "/data"]
CMD []
