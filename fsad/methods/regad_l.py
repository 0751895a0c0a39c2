"""RegAD-L: RegAD trained on the K support images of the target category only.

The RegAD paper's "individual training" setting (https://arxiv.org/abs/2207.07361):
instead of learning registration on other categories, every support set trains
its own network, with the same Siamese registration loss, optimisers and schedule
(``fsad.methods.regad.training``), on query/support pairs drawn among its K images (each query's
supports come from the other K - 1 images, with replacement). The trained network then
scores exactly like RegAD. As the network changes with the support set, so do the test
features (``embedding_depends_on_support``).

Example:
    >>> regad_l = RegADL(RegADConfig(image_size=128), epochs=30, pair_shots=2)
    >>> regad_l.fit(support)  # trains, then fits the Gaussian
    >>> scores = regad_l.predict(test_images)
"""

from __future__ import annotations

import torch

from fsad.config import RegADConfig
from fsad.methods.base import to_float
from fsad.methods.regad.checkpoint import build_model
from fsad.methods.regad.detector import RegADMethod
from fsad.methods.regad.training import epoch_batches, make_optimizers, training_step
from fsad.seed import seed_everything


class RegADL(RegADMethod):
    """Trains a fresh RegAD on every support set, then scores as RegAD.

    Args:
        config: RegAD settings (architecture, lr, momentum, seed, test-time settings).
        epochs: Training epochs; an epoch is one step over the K supports as queries.
        pair_shots: Supports per query during training (at most K - 1 distinct images).
    """

    name = "regad_l"
    embedding_depends_on_support = True

    def __init__(self, config: RegADConfig, epochs: int = 30, pair_shots: int = 2):
        self.epochs, self.pair_shots = epochs, pair_shots
        # The untrained network stands in until the first fit (or load_state) replaces it.
        super().__init__(build_model(config), config, name=self.name)
        self.min_support = 2  # training pairs a query with another support image

    def _train(self, support: torch.Tensor) -> None:
        self.check_support(support, "training pairs a query with another support image")
        k = len(support)
        config = self.config.replace(epochs=self.epochs, batch_size=k, train_shots=(self.pair_shots,), batches_per_epoch=None)
        seed_everything(config.seed)
        with torch.device("cpu"):  # initialised on the host (CPU generator): the same start on every device
            model = build_model(config)
        model.to(self.device)
        optimizers, schedulers = make_optimizers(model, config)
        images = support.to(self.device)  # K x 3 x S x S, converted to float per batch on the device
        model.train()
        # Training needs gradients whatever the caller's mode (fsad fit and the harness score without them).
        with torch.enable_grad():
            for epoch in range(config.epochs):
                for batch in epoch_batches([k], config, epoch):
                    training_step(model, optimizers, to_float(images[batch.queries]), to_float(images[batch.supports]))
                for sched in schedulers:
                    sched.step()
        self.model = model.eval()

    def fit(self, support: torch.Tensor) -> None:
        self._train(support)
        super().fit(support)
