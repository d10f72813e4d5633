# The edge agent: onnxruntime, ZeroMQ, gRPC; no torch (the base install is the edge's).
#   docker build -f deploy/docker/edge.Dockerfile -t cachenet-edge .
#   docker run --rm -v $PWD/bundles/cifar:/bundle:ro -p 5555:5555 cachenet-edge \
#       --bundle /bundle --bind tcp://0.0.0.0:5555 --cloud cloud.example:50051
# Builds for arm64 (Raspberry Pi 4/5, Jetson) as for amd64: docker buildx --platform.
FROM python:3.12-slim AS build
RUN python -m venv /opt/cachenet
WORKDIR /src
COPY pyproject.toml setup.cfg README.md constraints.txt ./
COPY cachenet ./cachenet
COPY edge_agent ./edge_agent
COPY cloud_server ./cloud_server
RUN /opt/cachenet/bin/pip install --no-cache-dir -c constraints.txt .

FROM python:3.12-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/cachenet --create-home cachenet
COPY --from=build /opt/cachenet /opt/cachenet
ENV PATH=/opt/cachenet/bin:$PATH PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
USER 10001
WORKDIR /var/lib/cachenet
EXPOSE 5555 9101
ENTRYPOINT ["cachenet-edge"]
CMD ["--bundle", "/var/lib/cachenet/bundle", "--bind", "tcp://0.0.0.0:5555", "--metrics-port", "9101", "--metrics-host", "0.0.0.0"]
