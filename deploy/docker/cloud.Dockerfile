# The cloud server, CPU build of torch by default.
#   docker build -f deploy/docker/cloud.Dockerfile -t cachenet-cloud .
#   docker run --rm -v $PWD/bundles/cifar:/bundle:ro -p 50051:50051 cachenet-cloud \
#       --bundle /bundle
# CUDA: torch's CUDA wheels carry the CUDA libraries, so only the index changes, and the
# host needs the NVIDIA driver and container toolkit:
#   docker build -f deploy/docker/cloud.Dockerfile \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t cachenet-cloud:cuda .
#   docker run --gpus all ... cachenet-cloud:cuda --bundle /bundle --device cuda
FROM python:3.12-slim AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/cachenet
WORKDIR /src
COPY pyproject.toml setup.cfg README.md constraints.txt ./
COPY cachenet ./cachenet
COPY edge_agent ./edge_agent
COPY cloud_server ./cloud_server
RUN /opt/cachenet/bin/pip install --no-cache-dir -c constraints.txt \
        --extra-index-url "$TORCH_INDEX" ".[build]"

FROM python:3.12-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/cachenet --create-home cachenet
COPY --from=build /opt/cachenet /opt/cachenet
ENV PATH=/opt/cachenet/bin:$PATH PYTHONUNBUFFERED=1
USER 10001
WORKDIR /var/lib/cachenet
EXPOSE 50051 50052 9100
ENTRYPOINT ["cachenet-cloud"]
CMD ["--bundle", "/var/lib/cachenet/bundle", "--host", "0.0.0.0", "--port", "50051", "--health-port", "50052", "--metrics-port", "9100", "--metrics-host", "0.0.0.0"]
