"""The demo's model at module level (a class defined inside a function cannot be named by a saved
Dynamo program, so a warm process could not skip the trace for it). Imports torch: imported only
when the model is built."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

VOCAB = 512
SEQ = 16


class Block(nn.Module):
    """Attention with a Python-float scale, layer norm, GELU MLP, tensor-method reshapes."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.heads, self.scale = heads, (dim // heads) ** -0.5

    def forward(self, x: torch.Tensor) -> Any:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * self.scale
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        x = x + self.out((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class DemoModel(nn.Module):
    """A small decoder block stack: embedding plus positions, blocks, norm, vocabulary head."""

    def __init__(self, dim: int = 128, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.embed, self.pos = nn.Embedding(VOCAB, dim), nn.Parameter(torch.zeros(SEQ, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, VOCAB, bias=False)

    def forward(self, tokens: torch.Tensor) -> Any:
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))
