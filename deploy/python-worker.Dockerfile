# syntax=docker/dockerfile:1
#
# The Python example worker image: `thriftworker-py` (the package in python/)
# serving examples/python/echo_app.py, the example Echo and Calc
# services. Build it from the repository root (the build context; the
# Dockerfile-specific python-worker.Dockerfile.dockerignore next to this file
# keeps it to what is copied below):
#
#   docker build -f deploy/python-worker.Dockerfile -t thriftworker-python-worker:0.1.0 .
#
# The manifests (deploy/components/python-worker) run
# /usr/local/bin/thriftworker-py, the ENTRYPOINT, with the target
# echo_app:services from /app. For your own app, replace the COPY into /app
# and the target (here and in the manifests). Like the data plane it runs as
# uid 65532: the "sidecar" overlay's ipc socket directory is mode 0700.

# Builder and runtime must be the same Python (the wheels are built for it).
ARG PYTHON_VERSION=3.11
FROM docker.io/library/python:${PYTHON_VERSION}-slim-bookworm AS builder
# thrift is published as source only: gcc compiles its C codec here, in the
# builder, so the runtime image gets the wheel and no compiler.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY python ./python
COPY tests/requirements.txt ./constraints.txt
# Wheels of thriftworker and every dependency. The versions are those the
# tests run (tests/requirements.txt as constraints: pyzmq, thrift, thriftpy2).
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt "./python[thriftpy2]"

FROM docker.io/library/python:${PYTHON_VERSION}-slim-bookworm
# From the builder's wheels only (no index), mounted for this step and not
# kept in a layer. pip puts the console script in /usr/local/bin.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --root-user-action=ignore --no-index --find-links=/wheels \
        "thriftworker[thriftpy2]"
COPY examples/python/echo_app.py examples/idl/echo.thrift /app/
# The target module is imported from /app. The root filesystem is read-only
# in the pods: no .pyc writes (pip compiled the packages' at install).
ENV PYTHONPATH=/app PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
USER 65532:65532
# Fail the build, not the pod, if the target does not load (imports, IDL).
RUN ["/usr/local/bin/thriftworker-py", "--check", "echo_app:services"]
ENTRYPOINT ["/usr/local/bin/thriftworker-py"]
CMD ["--help"]
