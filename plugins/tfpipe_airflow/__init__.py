"""tfpipe_airflow: the Airflow side of tfpipe. Thin adapters over the tfpipe library; no TensorFlow."""
