# Airflow runtime image: the official image of the same Airflow version, plus our locked
# requirements and packages. Never contains TensorFlow; ML stages run in the ML image.
# The official image has shipped git (for the Git DAG bundle) since Airflow 3.0.2.
FROM apache/airflow:3.3.2-python3.11

COPY --chown=airflow:root requirements.lock /opt/tfpipe/requirements.lock
COPY --chown=airflow:root include /opt/tfpipe/include
COPY --chown=airflow:root plugins /opt/tfpipe/plugins
RUN pip install --no-cache-dir -r /opt/tfpipe/requirements.lock /opt/tfpipe/include /opt/tfpipe/plugins

# Writable for any uid of group 0 (compose's `user`): the auth manager's passwords file, and the config's
# relative state paths (TFPIPE_PROJECT_ROOT=/opt/tfpipe, as in the ML image). Named volumes mounted there
# start out with this owner and mode.
USER root
RUN mkdir -p /opt/airflow/auth /opt/tfpipe/state \
    && chown airflow:root /opt/airflow/auth /opt/tfpipe/state \
    && chmod g+rwx /opt/airflow/auth /opt/tfpipe/state
USER airflow

# In production the DAGs come from the Git bundle (deploy/production.env), so each run records its commit.
# This copy is what `airflow-init` creates the pools from, and a local bundle to fall back to (unversioned
# runs) when the Git server is out of reach: point AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST at it.
COPY --chown=airflow:root dags /opt/airflow/dags
