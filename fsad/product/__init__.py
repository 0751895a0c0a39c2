"""A detector for a new product from K good images: ``fsad fit`` and ``fsad predict``.

- ``images``: the image files a user names (folders searched recursively).
- ``fit``: fit a detector (any of ``fsad.methods.registry.DETECTORS``) on the K support images,
  set its decision threshold from normal images only, save it as a detector folder.
- ``threshold``: the threshold rule and the normalised score (0.5 = the threshold).
- ``predict``: load a detector folder (never refitting) and write ``predictions.csv``, a
  heat-map overlay per image and, on request, a defect mask, at each image's own size.

Example:
    >>> record = fit_product([Path("product/good")], "padim_views", RegADConfig(), out=Path("detector"))
    >>> summary = predict_product(Path("detector"), [Path("incoming")], out=Path("results"), masks=True)
"""
