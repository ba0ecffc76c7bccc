"""The PyTorch side of `benchmarks/compare_torch.py`: the same networks and meta-steps.

Used only by the benchmarks (PyTorch is the optional `torch` extra; the library
never imports it). Parameters arrive as the JAX parameter tree of the matching
metalearn network and are converted once (`from_jax` / `to_jax`), so both sides
start from the same weights.

Three ways people write a MAML meta-step in PyTorch:

- `loop`: a Python loop over tasks, `torch.autograd.grad(create_graph=True)` in
  the inner loop and one `backward()` per task. This is what learn2learn's
  `MAML.adapt` does (learn2learn 0.2.0 itself does not build on Python 3.11), so
  it stands in for learn2learn.
- `func`: `torch.func` (`functional_call`-style pure functions, `grad`, `vmap`
  over tasks; batch norm written out, see `conv4_manual_norm`).
- `higher`: `higher.innerloop_ctx` over an `nn.Module` (second order only: with
  `track_higher_grads=False` higher cuts the graph to the initial weights).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the PyTorch convention)

# Where tensors are made: "cpu" or "cuda" (set by the benchmark's --torch_device).
DEVICE = "cpu"

# ----------------------------------------------------------------------------- networks


def conv4_from_jax(params: dict, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
  """metalearn `Conv4` params (HWIO kernels) -> a flat dict of PyTorch tensors (OIHW)."""
  out = {}
  for i in range(4):
    out[f"conv_{i}"] = _t(
      np.transpose(np.asarray(params[f"conv_{i}"]["kernel"]), (3, 2, 0, 1)), dtype
    )
    out[f"scale_{i}"] = _t(params[f"norm_{i}"]["scale"], dtype)
    out[f"offset_{i}"] = _t(params[f"norm_{i}"]["offset"], dtype)
  if "head" in params:
    out["head_w"] = _t(np.asarray(params["head"]["kernel"]).T, dtype)
    out["head_b"] = _t(params["head"]["bias"], dtype)
  return out


def conv4_to_jax(grads: dict[str, torch.Tensor]) -> dict:
  """The inverse of `conv4_from_jax`, for gradients."""
  out = {}
  for i in range(4):
    out[f"conv_{i}"] = {"kernel": np.transpose(_n(grads[f"conv_{i}"]), (2, 3, 1, 0))}
    out[f"norm_{i}"] = {"scale": _n(grads[f"scale_{i}"]), "offset": _n(grads[f"offset_{i}"])}
  if "head_w" in grads:
    out["head"] = {"kernel": _n(grads["head_w"]).T, "bias": _n(grads["head_b"])}
  return out


def conv4(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
  """Conv4 with batch statistics, `x [n, 1, 28, 28] -> [n, ways]` (or `[n, 64]` without head).

  As metalearn's: 3x3 convolutions without bias, batch norm over the batch
  (eps 1e-3, no running averages), ReLU, 2x2 max-pooling, a linear head.
  """
  return _conv4(p, x, _batch_norm_fused)


def conv4_manual_norm(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
  """`conv4` with batch norm written out in tensor operations, for `torch.func`.

  Under `torch.func.vmap`, the second derivative of `F.batch_norm` is wrong in
  torch 2.13.0 (about 2% relative error in the float64 MAML meta-gradient
  against metalearn, the per-task loop and higher, which agree to 1e-14); with
  the normalisation written out, `torch.func` agrees to 1e-14 as well.
  """
  return _conv4(p, x, _batch_norm_manual)


def _batch_norm_fused(x, scale, offset):
  return F.batch_norm(x, None, None, scale, offset, training=True, eps=1e-3)


def _batch_norm_manual(x, scale, offset):
  mean = x.mean((0, 2, 3), keepdim=True)
  var = ((x - mean) ** 2).mean((0, 2, 3), keepdim=True)
  return (x - mean) * torch.rsqrt(var + 1e-3) * scale[:, None, None] + offset[:, None, None]


def _conv4(p, x, norm):
  for i in range(4):
    x = F.conv2d(x, p[f"conv_{i}"], padding=1)
    x = F.max_pool2d(F.relu(norm(x, p[f"scale_{i}"], p[f"offset_{i}"])), 2)
  x = x.flatten(1)
  return F.linear(x, p["head_w"], p["head_b"]) if "head_w" in p else x


class Conv4Module(torch.nn.Module):
  """The same network as an `nn.Module` (for `higher`), loaded from the flat dict."""

  def __init__(self, p: dict[str, torch.Tensor]):
    super().__init__()
    dtype = p["conv_0"].dtype
    layers = []
    for i in range(4):
      conv = torch.nn.Conv2d(p[f"conv_{i}"].shape[1], 64, 3, padding=1, bias=False)
      norm = torch.nn.BatchNorm2d(64, eps=1e-3, track_running_stats=False)
      with torch.no_grad():
        conv.weight.copy_(p[f"conv_{i}"])
        norm.weight.copy_(p[f"scale_{i}"])
        norm.bias.copy_(p[f"offset_{i}"])
      layers += [conv, norm, torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
    self.body = torch.nn.Sequential(*layers)
    self.head = torch.nn.Linear(64, p["head_w"].shape[0])
    self.to(device=DEVICE, dtype=dtype)
    with torch.no_grad():
      self.head.weight.copy_(p["head_w"])
      self.head.bias.copy_(p["head_b"])

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.head(self.body(x).flatten(1))

  def named_grads(self) -> dict[str, torch.Tensor]:
    """Gradients under `conv4_from_jax`'s names."""
    g = {}
    for i in range(4):
      g[f"conv_{i}"] = self.body[4 * i].weight.grad
      g[f"scale_{i}"] = self.body[4 * i + 1].weight.grad
      g[f"offset_{i}"] = self.body[4 * i + 1].bias.grad
    g["head_w"], g["head_b"] = self.head.weight.grad, self.head.bias.grad
    return g


def mlp_from_jax(params: dict, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
  """metalearn `MLP` params -> flat PyTorch dict (`[out, in]` weights)."""
  names = [*sorted(k for k in params if k.startswith("hidden_")), "head"]
  return {
    f"{k}_{part}": _t(
      np.asarray(params[k]["kernel"]).T if part == "w" else params[k]["bias"], dtype
    )
    for k in names
    for part in ("w", "b")
  }


def mlp_to_jax(grads: dict[str, torch.Tensor]) -> dict:
  """The inverse of `mlp_from_jax`, for gradients."""
  names = sorted({k.rsplit("_", 1)[0] for k in grads})
  return {k: {"kernel": _n(grads[f"{k}_w"]).T, "bias": _n(grads[f"{k}_b"])} for k in names}


def mlp(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
  """ReLU MLP `[n, d] -> [n, out]` over `mlp_from_jax`'s dict."""
  hidden = sorted(k[:-2] for k in p if k.startswith("hidden_") and k.endswith("_w"))
  for k in hidden:
    x = F.relu(F.linear(x, p[f"{k}_w"], p[f"{k}_b"]))
  return F.linear(x, p["head_w"], p["head_b"])


# ----------------------------------------------------------------------------- MAML


def _adapt_loop(net, loss_fn, params, xs, ys, lr, steps, first_order):
  names = list(params)
  fast = dict(params)
  for _ in range(steps):
    loss = loss_fn(net(fast, xs), ys)
    grads = torch.autograd.grad(loss, [fast[k] for k in names], create_graph=not first_order)
    fast = {k: fast[k] - lr * g for k, g in zip(names, grads, strict=True)}
  return fast


def maml_loop_grads(net, loss_fn, params, batch, *, lr, steps, first_order):
  """learn2learn-style meta-gradient: per-task loop, one backward per task.

  Args:
    net: `(params, x) -> outputs`.
    loss_fn: `(outputs, y) -> scalar`.
    params: leaf tensors with `requires_grad=True`; their `.grad` receives the
      meta-gradient (mean over tasks).
    batch: `(xs [T, ...], ys [T, ...], xq [T, ...], yq [T, ...])` tensors.

  Returns:
    The meta-loss (mean over tasks), a float.
  """
  xs, ys, xq, yq = batch
  t = xs.shape[0]
  total = 0.0
  for i in range(t):
    fast = _adapt_loop(net, loss_fn, params, xs[i], ys[i], lr, steps, first_order)
    loss = loss_fn(net(fast, xq[i]), yq[i]) / t
    loss.backward()
    total = total + loss.detach()
  return float(total)  # one device synchronisation per step, not one per task


def maml_func_loss(net, loss_fn, *, lr, steps, first_order):
  """`torch.func` meta-loss: `(params, batch) -> mean query loss`, vmapped over tasks."""
  from torch.func import grad, vmap

  def task_loss(params, xs, ys, xq, yq):
    fast = params
    for _ in range(steps):
      g = grad(lambda p: loss_fn(net(p, xs), ys))(fast)
      if first_order:
        g = {k: v.detach() for k, v in g.items()}
      fast = {k: fast[k] - lr * g[k] for k in fast}
    return loss_fn(net(fast, xq), yq)

  def meta_loss(params, batch):
    return vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(params, *batch).mean()

  return meta_loss


def maml_higher_grads(module: Conv4Module, loss_fn, batch, *, lr, steps):
  """Second-order meta-gradient with `higher` (per-task loop); grads land in `module`."""
  import higher

  xs, ys, xq, yq = batch
  t = xs.shape[0]
  inner_opt = torch.optim.SGD(module.parameters(), lr=lr)
  total = 0.0
  for i in range(t):
    with higher.innerloop_ctx(module, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
      for _ in range(steps):
        diffopt.step(loss_fn(fmodel(xs[i]), ys[i]))
      loss = loss_fn(fmodel(xq[i]), yq[i]) / t
      loss.backward()
      total = total + loss.detach()
  return float(total)


# ----------------------------------------------------------------------------- ProtoNets


def protonet_loss(p, support_x, support_y, query_x, query_y, ways):
  """Prototypical-network episode loss: squared Euclidean distance to class means."""
  zs, zq = conv4(p, support_x), conv4(p, query_x)
  onehot = F.one_hot(support_y, ways).to(zs.dtype)
  protos = (onehot.T @ zs) / onehot.sum(0)[:, None]
  d = (zq * zq).sum(-1)[:, None] - 2.0 * zq @ protos.T + (protos * protos).sum(-1)[None, :]
  return F.cross_entropy(-d, query_y)


# ----------------------------------------------------------------------------- helpers


def _t(a, dtype: torch.dtype) -> torch.Tensor:
  return torch.tensor(np.asarray(a), dtype=dtype, device=DEVICE).requires_grad_(True)


def _n(t: torch.Tensor) -> np.ndarray:
  return t.detach().cpu().numpy()


def images(x: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
  """`[..., h, w, c]` NHWC numpy -> `[..., c, h, w]` contiguous tensor."""
  x = np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, -3))
  return torch.from_numpy(x).to(device=DEVICE, dtype=dtype)


def labels(y: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.asarray(y, np.int64)).to(DEVICE)
