"""The SSM's two forms: the chunked state-space-duality form (training) equals the step-by-step
recurrence (decoding) in float64, at lengths that are not multiples of the chunk, from a zero and
from a given state; and the model's output does not depend on the chunk length."""

from __future__ import annotations

import pytest
import torch

import cfglab.model.ssm as ssm_mod
from cfglab.model import GPTConfig, build_model
from cfglab.model.ssm import ssd_chunked, ssd_step

from .conftest import VOCAB


def recurrence(x, dt, A, Bm, Cm, state):
    """The oracle: S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T, y_t = S_t C_t, one t at a time."""
    ys = []
    for t in range(x.shape[1]):
        y, state = ssd_step(x[:, t], dt[:, t], A, Bm[:, t], Cm[:, t], state)
        ys.append(y)
    return torch.stack(ys, dim=1), state


def inputs(T: int, seed: int, b=2, H=3, P=4, N=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, T, H, P, generator=g, dtype=torch.float64)
    dt = torch.rand(b, T, H, generator=g, dtype=torch.float64) * 0.5 + 0.01
    A = -torch.rand(H, generator=g, dtype=torch.float64) * 3 - 0.1
    Bm = torch.randn(b, T, N, generator=g, dtype=torch.float64)
    Cm = torch.randn(b, T, N, generator=g, dtype=torch.float64)
    state = torch.randn(b, H, P, N, generator=g, dtype=torch.float64)
    return x, dt, A, Bm, Cm, state


@pytest.mark.parametrize("T", [1, 5, 8, 13, 20, 37])
@pytest.mark.parametrize("from_state", [False, True])
def test_chunked_form_equals_the_recurrence(T, from_state):
    x, dt, A, Bm, Cm, state = inputs(T, seed=T)
    start = state if from_state else torch.zeros_like(state)
    want_y, want_state = recurrence(x, dt, A, Bm, Cm, start)
    y, final = ssd_chunked(x, dt, A, Bm, Cm, 8, state if from_state else None)
    torch.testing.assert_close(y, want_y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, want_state, rtol=1e-10, atol=1e-10)


def test_the_model_does_not_depend_on_the_chunk_length(monkeypatch):
    torch.manual_seed(0)
    model = build_model(GPTConfig(vocab_size=VOCAB, family="ssm", block_size=64)).double().eval()
    x = torch.randint(0, VOCAB, (2, 45), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outs = []
        for chunk in (64, 16, 7, 1):
            monkeypatch.setattr(ssm_mod, "CHUNK", chunk)
            outs.append(model(x))
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-10, atol=1e-10)


def test_decay_and_skip_are_mamba2s():
    """A = -exp(A_log) in [-16, -1], softplus(dt_bias) in [1e-3, 0.1], D = 1 at init."""
    torch.manual_seed(0)
    model = build_model(GPTConfig(vocab_size=VOCAB, family="ssm", n_head=64, n_embd=128))
    mixer = model.blocks[0].mixer
    A = -torch.exp(mixer.A_log)
    dt = torch.nn.functional.softplus(mixer.dt_bias)
    assert A.min() >= -16 and A.max() <= -1
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert torch.equal(mixer.D, torch.ones(64))
