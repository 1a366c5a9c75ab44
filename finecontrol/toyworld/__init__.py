"""A synthetic world where identity is measurable, a model trained on it on CPU, and its evaluation."""
