# One image for every feedpipe process: `consume` (default), `worker`, `beat`, `create-tables`.
# Dependencies come from requirements.lock (every version and hash pinned; `python3 dev.py lock`
# renews it), so the image built tomorrow runs what the tests ran today.
#   docker build -t feedpipe .                           the default target: feedpipe itself
#   docker build --target flower -t feedpipe-flower .    the same, with Flower (README, Flower)
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY feedpipe ./feedpipe
RUN pip install --no-cache-dir --upgrade "pip==25.3" \
    && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin feedpipe
COPY requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir --require-hashes --no-deps -r /tmp/requirements.lock && rm /tmp/requirements.lock
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
WORKDIR /home/feedpipe
# /metrics, /healthz and /readyz: consume 9464, worker 9465, beat 9466 (FEEDPIPE_METRICS_PORT).
EXPOSE 9464 9465 9466

FROM base AS flower
COPY requirements-flower.lock /tmp/requirements-flower.lock
RUN pip install --no-cache-dir --require-hashes --no-deps -r /tmp/requirements-flower.lock \
    && rm /tmp/requirements-flower.lock
USER 10001
EXPOSE 5555
ENTRYPOINT ["celery", "-A", "feedpipe.worker", "flower"]

FROM base AS feedpipe
USER 10001
ENTRYPOINT ["feedpipe"]
CMD ["consume"]
