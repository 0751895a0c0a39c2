"""RegAD (Huang et al., ECCV 2022, https://arxiv.org/abs/2207.07361) as one method among the others.

- ``network``: backbone with STNs after its stages, Siamese head (``siamese``), STNs (``stn``);
- ``training``: aggregated training on other categories, resumable, one checkpoint per epoch;
- ``checkpoint``: building, saving and loading the network with its settings;
- ``detector``: the test-time protocol (22 support views, per-position Gaussian) as a detector.
"""
