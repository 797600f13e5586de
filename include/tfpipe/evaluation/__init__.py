"""Model evaluation: sliced TFMA metrics, the blessing gate and its report."""
