"""ParamBuffer: a model's parameters and gradients as views of one flat buffer.

At construction every parameter's ``.data`` is moved into one contiguous
tensor ``data`` and every ``.grad`` becomes a view of one contiguous tensor
``grad``, in ``model.parameters()`` order. Communication then works on those
two tensors (or contiguous slices of them) without ever concatenating or
allocating per step. Floating-point buffers (BatchNorm running statistics)
get a third flat tensor ``buffers`` so that algorithms that average models
can average them too.

Buckets group parameters in *reverse* order, the order in which backward
produces their gradients, into contiguous ranges of about ``bucket_bytes``
each (PyTorch DDP's scheme): bucket 0 holds the last parameters, and its
gradients are ready first.

Frozen parameters (``requires_grad=False``) get no gradient view, so
optimizers leave them alone; their gradient slot stays zero.

``opt.zero_grad()`` with the default ``set_to_none=True`` drops the views;
:meth:`ParamBuffer.adopt_grad` puts a parameter's fresh gradient back into
its slot (one copy). ``opt.zero_grad(set_to_none=False)`` avoids that copy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Bucket:
    """A contiguous range ``[start, end)`` of the flat buffers and its parameter indices."""
    start: int
    end: int
    params: tuple[int, ...]


class ParamBuffer:
    """Flat storage for a module's parameters, gradients and floating buffers.

    Args:
        module: the model; all its parameters must share one dtype and device.
        bucket_bytes: target bucket size in bytes (``None``: one bucket).
    """

    def __init__(self, module: torch.nn.Module, bucket_bytes: float | None = None):
        self.params = list(module.parameters())
        if not self.params:
            raise ValueError("the model has no parameters")
        dtypes = {p.dtype for p in self.params}
        devices = {p.device for p in self.params}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError("all parameters must share one dtype and device, got "
                             f"{sorted(map(str, dtypes))} on {sorted(map(str, devices))}")
        self.dtype, self.device = dtypes.pop(), devices.pop()
        self.offsets = []
        total = 0
        for p in self.params:
            self.offsets.append((total, total + p.numel()))
            total += p.numel()
        self.numel = total
        self.data = torch.empty(total, dtype=self.dtype, device=self.device)
        self.grad = torch.zeros(total, dtype=self.dtype, device=self.device)
        self.trainable = [p.requires_grad for p in self.params]
        with torch.no_grad():
            for i, p in enumerate(self.params):
                self.data[slice(*self.offsets[i])].copy_(p.data.reshape(-1))
                p.data = self.param_view(i)
                if self.trainable[i]:     # frozen parameters keep grad None: optimizers skip them
                    p.grad = self.grad_view(i)
        self.buffer_list = [b for b in module.buffers() if b.is_floating_point()]
        nbuf = sum(b.numel() for b in self.buffer_list)
        self.buffers = torch.empty(nbuf, dtype=self.dtype, device=self.device)
        offset = 0
        for b in self.buffer_list:
            view = self.buffers[offset: offset + b.numel()]
            view.copy_(b.data.reshape(-1))
            b.data = view.view_as(b)
            offset += b.numel()
        self.buckets = self._make_buckets(bucket_bytes)
        self.bucket_of = [0] * len(self.params)
        for k, bucket in enumerate(self.buckets):
            for i in bucket.params:
                self.bucket_of[i] = k

    def param_view(self, i: int) -> torch.Tensor:
        return self.data[slice(*self.offsets[i])].view_as(self.params[i])

    def grad_view(self, i: int) -> torch.Tensor:
        return self.grad[slice(*self.offsets[i])].view_as(self.params[i])

    def adopt_grad(self, i: int, scale: float = 1.0) -> bool:
        """Make parameter ``i``'s ``.grad`` its view of ``grad`` again.

        A fresh gradient (after ``zero_grad(set_to_none=True)``) is copied in,
        times ``scale`` (in the same pass); a missing one (unused parameter)
        becomes zeros. Frozen parameters (``requires_grad=False``) are left
        alone; their slot stays zero. Returns whether the gradient was in its
        slot already (accumulated there: ``scale`` was not applied).
        """
        p = self.params[i]
        if not self.trainable[i]:
            return False
        g = p.grad
        if g is not None and g.data_ptr() == self.grad.data_ptr() + self.offsets[i][0] * self.grad.element_size():
            return True
        view = self.grad_view(i)
        if g is None:
            view.zero_()
        elif scale == 1.0:
            view.copy_(g)
        else:
            torch.mul(g, scale, out=view)
        p.grad = view
        return False

    def flat_grad(self) -> torch.Tensor:
        """:attr:`grad` holding every parameter's current gradient (see :meth:`adopt_grad`)."""
        for i in range(len(self.params)):
            self.adopt_grad(i)
        return self.grad

    def _make_buckets(self, bucket_bytes: float | None) -> list[Bucket]:
        if bucket_bytes is None:
            return [Bucket(0, self.numel, tuple(reversed(range(len(self.params)))))]
        cap = max(1, int(bucket_bytes // self.data.element_size()))
        buckets, current, size = [], [], 0
        for i in reversed(range(len(self.params))):
            current.append(i)
            size += self.params[i].numel()
            if size >= cap:
                buckets.append(current)
                current, size = [], 0
        if current:
            buckets.append(current)
        return [Bucket(self.offsets[b[-1]][0], self.offsets[b[0]][1], tuple(b)) for b in buckets]
