"""Data validation: TFDV statistics, schema anomalies, drift and skew, Great Expectations rules."""
