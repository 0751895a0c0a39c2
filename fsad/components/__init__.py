"""Parts that several methods share: backbones and their weights, the per-position Gaussian,
RegAD's support views, anomaly maps (upsampling + blur), nearest neighbours and the flow."""
