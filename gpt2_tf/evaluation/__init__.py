"""Numbers about a model on data: the evaluation loop (training calls it too) and the metrics."""
