# One image for every feedpipe process: `consume` (default), `worker`, `beat`, `create-tables`.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY feedpipe ./feedpipe
RUN pip install --no-cache-dir --upgrade "pip==25.3" \
    && pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin feedpipe
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
WORKDIR /home/feedpipe
EXPOSE 9464
ENTRYPOINT ["feedpipe"]
CMD ["consume"]
