# diffdeur: low-field MRI enhancement as a BIDS App.
#   CPU image (default):  docker build -t diffdeur .
#   CUDA image:           docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#                                      --build-arg TORCH_VERSION=2.13.0+cu128 -t diffdeur:cuda .
#   With SynthSeg weights baked in (verified by sha256; the build fails on a mismatch):
#                         docker build --build-arg SYNTHSEG_WEIGHTS_URL=<url of synthseg_2.0.h5> -t diffdeur .
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0+cpu
ARG SYNTHSEG_WEIGHTS_URL=""
ARG SYNTHSEG_SHA256=f190bfd742f450ef3ca2c9df9ed4d2e0232b3a74471da5e51b7770bacdf80c3e
ARG VERSION=unknown
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown

# torch first, from its own index, so `pip install .` keeps this build
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

COPY . /opt/src
RUN pip install --no-cache-dir "/opt/src[validate,synthseg]" \
    && python /opt/src/docker/fetch_synthseg.py "${SYNTHSEG_WEIGHTS_URL}" "${SYNTHSEG_SHA256}" /opt/synthseg/synthseg_2.0.h5 \
    && cp /opt/src/version /version \
    && rm -rf /opt/src /root/.cache \
    && mkdir -p /opt/synthseg && chmod -R a+rX /opt/synthseg

# Any UID, read-only root, no network: nothing is written outside /out, the work dir and /tmp.
ENV NIPYPE_NO_ET=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONNOUSERSITE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DIFFDEUR_SYNTHSEG_MODEL=/opt/synthseg/synthseg_2.0.h5 \
    DIFFDEUR_DOCKER_TAG=diffdeur:${VERSION}

LABEL org.opencontainers.image.title="diffdeur" \
      org.opencontainers.image.description="Low-field MRI enhancement (DiffDeuR: diffusion prior + INR) as a BIDS App" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.source="https://github.com/diffdeur/diffdeur" \
      org.opencontainers.image.licenses="Apache-2.0"

ENTRYPOINT ["diffdeur"]
