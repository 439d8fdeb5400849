# The service's image: the official Ray image with this project and its dependencies baked
# in, for `serve deploy` on a Ray cluster and for KubeRay (configs/kuberay/rayservice.yaml).
#
#   docker build -t animegan-serve:0.1.0-cpu .
#   docker build -t animegan-serve:0.1.0-gpu --build-arg VARIANT=gpu \
#     --build-arg TORCH_INDEX_URL=https://pypi.org/simple .
#
# The official weights (4 × 8.6 MB) are downloaded at build time into the image, so pods
# start without egress; --build-arg WEIGHTS=none leaves them to the first start instead.
# docs/operations.md: build, push, deploy, upgrade.

ARG RAY_VERSION=2.60.0
ARG VARIANT=cpu
FROM rayproject/ray:${RAY_VERSION}-py311-${VARIANT}

# torch's CPU build (the default index's torch is the CUDA one, several GB larger).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ARG WEIGHTS=all

ENV ANIMEGAN_WEIGHTS_DIR=/home/ray/animegan-weights \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /home/ray/animegan-serve

# torch first, alone: the largest layer (GBs with CUDA) is kept when only the code changes.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# The project itself: its dependencies' bounds are in pyproject.toml.
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users serve_app ./serve_app
# hadolint ignore=DL3013
RUN pip install ".[server,heif,s3]"

COPY --chown=ray:users serve_config.yaml ./
COPY --chown=ray:users configs ./configs

RUN if [ "${WEIGHTS}" = "all" ]; then animegan weights download; fi

# Ray's own entrypoint stays: KubeRay runs `ray start` in it and applies the Serve config.
EXPOSE 8000
