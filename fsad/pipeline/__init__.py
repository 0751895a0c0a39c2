"""The steps of the DVC pipeline (``dvc.yaml``), one module per stage, called by the notebooks.

Each notebook under ``notebooks/`` is a stage: it reads its sections of ``params.yaml``
through the schema (:mod:`fsad.pipeline.params`; papermill injects only the category of a
per-category stage) and calls one of these modules, explains and draws. Every
path comes from :mod:`fsad.pipeline.layout`, rooted at the project root, so a stage gives
the same files from papermill, JupyterLab or any working directory.
"""
