# syntax=docker/dockerfile:1
# clerk-gateway: a slim, non-root runtime image. Build: docker build -t clerk-gateway .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---- build: wheels for the gateway and every dependency -------------------------------
FROM ${PYTHON_IMAGE} AS build
# A C compiler for mypyc, which builds the request path as C extensions (setup.py; about
# 45% less CPU in the Python part of a request). Only this stage has it. Debian's security updates move these
# versions, so they are not pinned: the base image is.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY buildsystem ./buildsystem
COPY gateway ./gateway
# require: an image whose compile failed is not built at all (never a quiet pure fallback)
RUN CLERK_GATEWAY_COMPILE=require pip wheel --no-cache-dir --wheel-dir /wheels .

# ---- runtime: no compilers, no caches, no shell tools beyond the base ------------------
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="clerk-gateway" \
      org.opencontainers.image.description="Clerk authentication in front of any HTTP service" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/clerk-gateway/clerk-gateway"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin gateway
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links=/wheels "clerk-gateway==${VERSION}" \
 && rm -rf /wheels /root/.cache
COPY config/routes.yaml /etc/clerk-gateway/routes.yaml
# Works with a read-only root filesystem: nothing is written at run time.
USER 10001:10001
EXPOSE 8080 9090
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["clerk-gateway"]
CMD ["run", "--config", "/etc/clerk-gateway/routes.yaml"]
