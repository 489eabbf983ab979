# syntax=docker/dockerfile:1
# ratelimitd: Envoy's rate-limit gRPC service (8081) with HTTP health and metrics (8080).
#   docker build -t ratelimitd .
#   docker run --rm -p 8081:8081 -p 8080:8080 ratelimitd
#   docker run ... -e RATELIMITD_REDIS_URL=redis://redis:6379 -e RATELIMITD_WORKERS=2 ratelimitd
#     (workers share the ports; the supervisor keeps their metrics under /tmp)
# Rules are read from /etc/ratelimitd/config (every *.yaml in it); mount yours there.

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
RUN pip --python /opt/ratelimitd/bin/python install --no-cache-dir --no-deps --no-build-isolation . \
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
# No curl in the image: Python itself asks /healthcheck (exit 1 on 503 or no answer).
# Checked every second while starting (--start-interval needs Docker 25+), then every 10 s.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --start-interval=1s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RATELIMITD_HTTP_PORT', '8080') + '/healthcheck', timeout=2)"]
ENTRYPOINT ["ratelimitd"]
CMD ["serve"]
