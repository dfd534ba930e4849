"""The executor side, without Ray: a run's data, local training (one job at a time or
stacked), server fine-tuning, evaluation, and the in-process backend."""
