"""Model training for big_tipper: the Keras model carries its own preprocessing, so serving needs no separate code."""
