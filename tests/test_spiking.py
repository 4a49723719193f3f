"""LIF neuron and time-shared dropout against spikingjelly (test-only oracle)."""
import importlib
import pytest
import torch

from dcls_zoo.layers.spiking import LIFNeuron, TimeSharedDropout, atan_spike

sj_neuron = importlib.import_module("spikingjelly.activation_based.neuron")
from spikingjelly.activation_based import functional, layer, surrogate  # noqa: E402


def _oracle_lif(tau, v_threshold=1.0, alpha=5.0):
    return sj_neuron.LIFNode(
        tau=tau, v_threshold=v_threshold, surrogate_function=surrogate.ATan(alpha=alpha), detach_reset=True,
        step_mode="m", decay_input=False, store_v_seq=True)


@pytest.mark.parametrize("tau", [(10.05 + 1e-9) / 10, (15 + 1e-9) / 10, 2.0])
def test_lif_matches_spikingjelly_forward_and_backward(tau):
    torch.manual_seed(0)
    x = (torch.randn(30, 4, 16) * 1.5).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)

    spikes, v = LIFNeuron(tau=tau, surrogate_alpha=5.0).forward_with_potential(x)
    oracle = _oracle_lif(tau)
    spikes_ref = oracle(x_ref)
    v_ref = oracle.v_seq

    assert spikes.sum() > 0 and (1 - spikes).sum() > 0  # both regimes exercised
    assert torch.equal(spikes, spikes_ref)
    assert torch.equal(v, v_ref)

    weights = torch.randn_like(v)
    ((spikes * weights).sum() + (v * weights).sum()).backward()
    ((spikes_ref * weights).sum() + (v_ref * weights).sum()).backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    functional.reset_net(oracle)


def test_non_spiking_readout_matches_spikingjelly():
    torch.manual_seed(1)
    x = torch.randn(20, 3, 5) * 3
    spikes, v = LIFNeuron(tau=1.5, v_threshold=1e9).forward_with_potential(x)
    oracle = _oracle_lif(1.5, v_threshold=1e9)
    oracle(x)
    assert spikes.sum() == 0
    assert torch.equal(v, oracle.v_seq)


def test_atan_surrogate_gradient_formula():
    x = torch.linspace(-2, 2, 41, requires_grad=True)
    atan_spike(x, alpha=5.0).sum().backward()
    expected = 2.5 / (1 + (torch.pi / 2 * 5.0 * x.detach()) ** 2)
    torch.testing.assert_close(x.grad, expected)
    assert torch.equal(atan_spike(torch.tensor([-1e-6, 0.0, 1e-6])), torch.tensor([0.0, 1.0, 1.0]))


def test_lif_rejects_bad_arguments():
    with pytest.raises(ValueError, match="tau must be > 1"):
        LIFNeuron(tau=1.0)
    with pytest.raises(ValueError, match="time-major"):
        LIFNeuron(tau=2.0)(torch.zeros(5))


def test_time_shared_dropout_matches_spikingjelly_and_shares_mask():
    x = torch.rand(12, 4, 32) + 0.5
    torch.manual_seed(3)
    out = TimeSharedDropout(0.4).train()(x)
    torch.manual_seed(3)
    out_ref = layer.Dropout(0.4, step_mode="m").train()(x)
    assert torch.equal(out, out_ref)
    dropped = out == 0
    assert dropped.any() and (~dropped).any()
    assert torch.equal(dropped, dropped[:1].expand_as(dropped))  # one mask for every time step
    torch.testing.assert_close(out[~dropped], (x / 0.6)[~dropped])
    assert torch.equal(TimeSharedDropout(0.4).eval()(x), x)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        TimeSharedDropout(1.0)
