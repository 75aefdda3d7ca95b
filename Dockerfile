# The broker in a container. Migrations are a separate step:
#   docker run --env-file broker.env IMAGE python -m service migrate
#   docker run --env-file broker.env -p 8000:8000 IMAGE
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md alembic.ini ./
COPY service ./service
COPY alembic ./alembic
RUN pip install . && useradd --system --uid 10001 broker
USER broker

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["python", "-m", "service", "serve", "--host", "0.0.0.0", "--port", "8000"]
