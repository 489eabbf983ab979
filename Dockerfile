# syntax=docker/dockerfile:1
# ratelimitd: Envoy's rate-limit gRPC service (8081) with HTTP health and metrics (8080).
#   podman build --format docker -t ratelimitd:0.1.0 .     (or: docker build -t ratelimitd:0.1.0 .)
#   podman run --rm --read-only --cap-drop=ALL -p 8081:8081 -p 8080:8080 ratelimitd:0.1.0
#   ... -e RATELIMITD_REDIS_URL=redis://redis:6379 -e RATELIMITD_WORKERS=2 --tmpfs /tmp ...
#     (workers share the ports; the supervisor keeps their metrics under /tmp)
# Rules are read from /etc/ratelimitd/config (every *.yaml in it); mount yours there.
# (--format docker keeps the HEALTHCHECK: the OCI image format has no field for it.)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: install the package and its dependencies into a self-contained venv ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv --without-pip /opt/ratelimitd
# Exact versions with hashes from the lock (scripts/lock), then the package itself, built
# with the locked setuptools: nothing is resolved or fetched outside the lock.
COPY requirements.txt ./
RUN pip --python /opt/ratelimitd/bin/python install --no-cache-dir --require-hashes \
        -r requirements.txt
COPY pyproject.toml README.md ./
COPY ratelimitd/ ./ratelimitd/
# The installers leave with the build: the image runs the service, it installs nothing.
RUN pip --python /opt/ratelimitd/bin/python install --no-cache-dir --no-deps --no-build-isolation . \
    && pip --python /opt/ratelimitd/bin/python uninstall --yes pip setuptools \
    && /opt/ratelimitd/bin/ratelimitd check-config --help > /dev/null

# ---- runtime: the venv, the example rules and nothing else ----
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 ratelimitd \
    && useradd --system --uid 10001 --gid ratelimitd --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin ratelimitd
COPY --from=build /opt/ratelimitd /opt/ratelimitd
COPY deploy/config/ /etc/ratelimitd/config/
ENV PATH=/opt/ratelimitd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RATELIMITD_CONFIG=/etc/ratelimitd/config \
    RATELIMITD_HOST=0.0.0.0 \
    RATELIMITD_GRPC_PORT=8081 \
    RATELIMITD_HTTP_PORT=8080 \
    RATELIMITD_LOG_LEVEL=info \
    RATELIMITD_LOG_FORMAT=json
RUN ratelimitd check-config "$RATELIMITD_CONFIG"
USER 10001:10001
EXPOSE 8081 8080
# The server's own check asks /healthcheck on the port the server was started with (its flags
# and environment, read from /proc/1), so `serve --http-port N` stays healthy. Only the flags
# that Docker, podman 4 and buildah 1.28 all know (no --start-interval).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["ratelimitd", "healthcheck"]
ENTRYPOINT ["ratelimitd"]
CMD ["serve"]
