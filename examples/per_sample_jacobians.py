r"""Per-sample Jacobians over a batch (a CNN, an RNN's hidden-to-hidden map) and how to test them.

The questions (PyTorch forum): how to get every sample's Jacobian of a small CNN in one go
(tiling ``x`` *after* the forward pass gave "One of the differentiated Tensors appears to not
have been used in the graph": ``x.repeat(...)`` is a new node that ``y`` does not depend on),
and whether a loop of ``autograd.grad`` calls with unit ``grad_outputs`` gives the
hidden-to-hidden Jacobian of a one-layer RNN over a batch, and *how to test it*.

The answers:

* :func:`constrained_grad.batch_jacobian` maps a function of a batch to its per-sample
  Jacobians ``(B, *out, *in)`` with ``torch.func`` (``vmap`` of ``jacrev``/``jacfwd``, chosen by
  shape); no tiling, no loop over outputs in Python.
* For the RNN, put the input and the hidden state side by side,
  :math:`z = [u, h]`, take ``batch_jacobian`` of :math:`z \mapsto h' = \mathrm{RNN}(u, h)` and
  keep the hidden columns: :math:`\partial h'/\partial h`, one ``(H, H)`` block per sample.
  The forum's loop is right too when the samples are independent (the unit cotangent
  repeated over the batch picks row ``i`` of every sample's Jacobian at once).
* The test: an oracle that cannot share the bug, ``torch.autograd.functional.jacobian`` on
  *one sample at a time*, in float64; and for ``steps`` recurrent steps the chain rule,
  :math:`\partial h_T/\partial h_0 = \prod_t \partial h_t/\partial h_{t-1}` along the trajectory.

Run: ``python examples/per_sample_jacobians.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import constrained_grad as cg


class CNNNet(nn.Module):
    """The forum's network: Conv2d(1, 3, 5) -> ReLU -> Linear(3, 4) -> ReLU on 1x5x5 images."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = nn.Conv2d(1, 3, 5)
        self.fc1 = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.cnn(x))
        return torch.relu(self.fc1(x.reshape(x.shape[0], -1)))


def per_sample_oracle(f, x: torch.Tensor) -> torch.Tensor:
    """Jacobian of each sample on its own (float64 autograd), stacked: (B, *out, *in)."""
    return torch.stack(
        [
            torch.autograd.functional.jacobian(lambda xb: f(xb.unsqueeze(0)).squeeze(0), x[b])
            for b in range(x.shape[0])
        ]
    )


def rnn_step(rnn: nn.RNN, n_in: int):
    """``z = [u, h]`` (B, n_in + H) -> next hidden state (B, H), one sample per row."""

    def step(z: torch.Tensor) -> torch.Tensor:
        u, h = z[:, :n_in], z[:, n_in:]
        _, h_next = rnn(u.unsqueeze(1), h.unsqueeze(0))  # hidden: (num_layers=1, B, H)
        return h_next[0]

    return step


def forum_loop(rnn: nn.RNN, u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The forum's loop: one autograd.grad per unit vector, repeated over the batch."""
    h = h.detach().requires_grad_(True)
    _, h_next = rnn(u.unsqueeze(1), h.unsqueeze(0))
    rows = []
    for unit in torch.eye(h.shape[1], dtype=h.dtype):
        (g,) = torch.autograd.grad(
            h_next[0], h, grad_outputs=unit.expand_as(h_next[0]), retain_graph=True
        )
        rows.append(g)
    return torch.stack(rows, dim=1)  # (B, H_out, H_in)


def main(steps: int = 5, out_dir: str | Path | None = None, seed: int = 0) -> dict:
    """``steps``: recurrent steps for the chained hidden-to-hidden Jacobian."""
    torch.manual_seed(seed)
    metrics: dict[str, float] = {}

    # 1. the CNN: (10, 4) outputs per (10, 1, 5, 5) batch -> (10, 4, 1, 5, 5) Jacobians
    cnet = CNNNet().double()
    x = torch.randn(10, 1, 5, 5, dtype=torch.float64)
    jac = cg.batch_jacobian(cnet, x, create_graph=False)
    metrics["cnn_jacobian_numel"] = float(jac.numel())
    metrics["cnn_nonzero_fraction"] = float((jac != 0).float().mean())  # not trivially zero
    metrics["cnn_max_abs_error"] = float((jac - per_sample_oracle(cnet, x)).abs().max())

    # 2. the RNN: hidden-to-hidden Jacobian of one step, per sample
    n_in, hidden, batch = 3, 8, 6
    rnn = nn.RNN(n_in, hidden, num_layers=1, batch_first=True).double()
    u = torch.randn(batch, steps, n_in, dtype=torch.float64)
    h0 = torch.randn(batch, hidden, dtype=torch.float64)
    step = rnn_step(rnn, n_in)
    z = torch.cat([u[:, 0], h0], dim=1)
    j_step = cg.batch_jacobian(step, z, create_graph=False)[:, :, n_in:]  # (B, H, H)

    def hidden_map(b: int):
        """Sample b's hidden-to-hidden map h -> h' with its own input u_b (a plain function)."""
        return lambda hb: step(torch.cat([u[b : b + 1, 0], hb[None]], dim=1))[0]

    oracle = torch.stack(
        [torch.autograd.functional.jacobian(hidden_map(b), h0[b]) for b in range(batch)]
    )
    metrics["rnn_step_max_abs_error"] = float((j_step - oracle).abs().max())
    metrics["forum_loop_max_abs_error"] = float((forum_loop(rnn, u[:, 0], h0) - oracle).abs().max())

    # 3. through `steps` steps: d h_T / d h_0 for the whole batch, checked by the chain rule
    def unroll(h: torch.Tensor, u_seq: torch.Tensor) -> torch.Tensor:
        for t in range(steps):
            h = step(torch.cat([u_seq[:, t], h], dim=1))
        return h

    def unroll_flat(zz: torch.Tensor) -> torch.Tensor:  # zz = [h0, u_1..u_T] per sample
        return unroll(zz[:, :hidden], zz[:, hidden:].reshape(-1, steps, n_in))

    zz = torch.cat([h0, u.reshape(batch, -1)], dim=1)
    j_total = cg.batch_jacobian(unroll_flat, zz, create_graph=False)[:, :, :hidden]
    chain = torch.eye(hidden, dtype=torch.float64).expand(batch, hidden, hidden)
    h = h0
    for t in range(steps):
        zt = torch.cat([u[:, t], h], dim=1)
        chain = cg.batch_jacobian(step, zt, create_graph=False)[:, :, n_in:] @ chain
        h = step(zt).detach()
    metrics["rnn_chain_rule_max_abs_error"] = float((j_total - chain).abs().max())
    metrics["rnn_steps"] = float(steps)

    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"cnn": jac, "rnn_step": j_step, "rnn_total": j_total}, out / "per_sample_jacobians.pt"
        )
    print(
        f"CNN: Jacobians {tuple(jac.shape)}, max |error| vs per-sample autograd "
        f"{metrics['cnn_max_abs_error']:.1e}"
    )
    print(
        f"RNN: d h'/d h {tuple(j_step.shape)}, max |error| {metrics['rnn_step_max_abs_error']:.1e}"
        f" (forum loop: {metrics['forum_loop_max_abs_error']:.1e}); d h_{steps}/d h_0 vs chain "
        f"rule {metrics['rnn_chain_rule_max_abs_error']:.1e}"
    )
    return metrics


if __name__ == "__main__":
    main()
