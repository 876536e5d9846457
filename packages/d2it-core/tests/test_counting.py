"""MAC counting: linear layers through torch's counter, attention counted explicitly."""

import torch
from torch import nn

from d2it.attention import math_attention, sdpa_attention
from d2it.counting import count, count_params, counting


class AttnNet(nn.Module):
    def __init__(self, fn, dim=8, heads=2):
        super().__init__()
        self.fn, self.heads = fn, heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.fn(q, k, v)


def test_linear_macs_exact():
    net = nn.Linear(10, 20)
    c = count(net, torch.zeros(3, 10))
    assert c.macs == 3 * 10 * 20 and c.attention_macs == 0 and c.params == 220


def test_attention_is_counted_once_for_every_backend():
    x = torch.zeros(2, 5, 8)
    qkv_macs = 2 * 5 * 8 * 24
    attn_macs = 2 * 2 * 5 * 5 * (4 + 4)  # batch * heads * N * M * (d + dv)
    for fn in (sdpa_attention, math_attention):
        c = count(AttnNet(fn), x)
        assert (c.macs, c.attention_macs) == (qkv_macs + attn_macs, attn_macs)
        assert c.macs_without_attention == qkv_macs


def test_boolean_mask_counts_allowed_pairs_only():
    q = torch.zeros(1, 1, 4, 2)
    mask = torch.eye(4, dtype=torch.bool)[None, None]
    net = nn.Identity()
    net.forward = lambda x: sdpa_attention(x, x, x, mask)
    assert count(net, q).attention_macs == 4 * (2 + 2)


def test_counting_flag_is_scoped():
    assert not counting()
    seen = []
    net = nn.Identity()
    net.forward = lambda x: seen.append(counting()) or x
    count(net, torch.zeros(1))
    assert seen == [True] and not counting()


def test_shared_parameters_counted_once():
    lin = nn.Linear(4, 4)
    assert count_params(nn.Sequential(lin, lin)) == 20
