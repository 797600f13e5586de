"""tfpipe: the ML library behind the tfpipe Airflow DAG bundle.

Importable and testable without Airflow. Heavy libraries (TensorFlow, TFDV, TFMA, Beam, Great
Expectations) are imported inside the stages that need them, never at package import.
"""

__version__ = "0.1.0"
