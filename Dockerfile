# atlas: CPU torch by default; pass --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
# (or another CUDA index) for a GPU image.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    ATLAS_HOME=/data

RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /opt/atlas
COPY pyproject.toml README.md ./
COPY atlas ./atlas
COPY migrations ./migrations
RUN pip install .

VOLUME ["/data"]
ENTRYPOINT ["atlas"]
CMD ["--help"]
