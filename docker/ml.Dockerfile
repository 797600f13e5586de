# ML runtime image: TensorFlow, TFDV, TFMA, Beam and the tfpipe library. Runs one stage per
# container: `python -m tfpipe <stage> ...` (Kubernetes pods and Vertex AI custom jobs).
# Debian 12 (glibc 2.36), like the Airflow image: TFDV 1.16 is the newest TFDV that loads on it.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=1
# The commit the image was built from, recorded in every model's lineage:
#   docker build --build-arg TFPIPE_CODE_VERSION=git:$(git rev-parse HEAD) ...
ARG TFPIPE_CODE_VERSION=unknown
ENV TFPIPE_CODE_VERSION=${TFPIPE_CODE_VERSION}
COPY requirements-ml.lock /opt/tfpipe/requirements-ml.lock
RUN pip install --no-cache-dir -r /opt/tfpipe/requirements-ml.lock
COPY include /opt/tfpipe/include
RUN pip install --no-cache-dir --no-deps /opt/tfpipe/include
# The pipeline configs and schemas: the model server reads its `serving` section (Vertex AI endpoints run
# `python -m tfpipe serve --config /opt/tfpipe/dags/configs/<pipeline>.yaml`); relative paths resolve here.
COPY dags/configs /opt/tfpipe/dags/configs
ENV TFPIPE_PROJECT_ROOT=/opt/tfpipe

# Relative state paths of the config (the model server's request log) resolve under /opt/tfpipe/state;
# a named volume mounted there starts out with this owner.
RUN useradd --create-home --uid 50000 tfpipe \
    && mkdir -p /opt/tfpipe/state && chown tfpipe /opt/tfpipe/state
USER tfpipe
WORKDIR /home/tfpipe
ENTRYPOINT []
CMD ["python", "-m", "tfpipe", "--help"]
