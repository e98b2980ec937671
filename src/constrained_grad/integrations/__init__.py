"""Integrations with training frameworks; each needs an optional dependency.

* :mod:`constrained_grad.integrations.lightning`: :class:`ConstrainedLightningModule`, a
  PyTorch Lightning ``LightningModule`` whose training step is constrained_grad's
  primal-dual step (``pip install "constrained-grad[lightning]"``).

Nothing here is imported by ``import constrained_grad``; import the submodule you need::

    from constrained_grad.integrations.lightning import ConstrainedLightningModule
"""
