"""The study harness: support sets, the evaluation loop, leave-one-out models, the
RegAD experiment, the comparison of methods, the ablations and the costs."""
