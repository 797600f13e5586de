# Airflow runtime image: the official image of the same Airflow version, plus our locked
# requirements and packages. Never contains TensorFlow; ML stages run in the ML image.
FROM apache/airflow:3.3.2-python3.11

COPY --chown=airflow:root requirements.lock /opt/tfpipe/requirements.lock
COPY --chown=airflow:root include /opt/tfpipe/include
COPY --chown=airflow:root plugins /opt/tfpipe/plugins
RUN pip install --no-cache-dir -r /opt/tfpipe/requirements.lock /opt/tfpipe/include /opt/tfpipe/plugins

COPY --chown=airflow:root dags /opt/airflow/dags
